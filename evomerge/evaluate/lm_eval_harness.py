"""lm-eval harness evaluator: `lm_eval.simple_evaluate` on an HFLM wrapping the live model.

Built once per worker: the TaskManager indexes only the include paths (indexing lm-eval's
built-in tasks costs seconds, so only when asked or when no include path is given), and the
task objects (datasets loaded, documents indexed) are built once and handed to every
`simple_evaluate` call. The HFLM wraps the one live model, whose weights the candidate builder
rewrites in place. No request cache is used: lm-eval's cache key ignores the weights.

Metric names are ``task/metric`` (``task/metric,filter`` for a filter other than ``none``);
multiple-choice tasks also get ``task/p_correct``, the probability of the gold choice among
the choices, and loglikelihood tasks ``task/p_answer``, the probability of the whole answer
(continuous per-sample signals). Per-sample scores come from `log_samples`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.evaluate.base import (
    Evaluation,
    Evaluator,
    EvaluatorError,
    Split,
    chosen_items,
    cut_validation,
    leading,
    pick_items,
)

# simple_evaluate arguments this evaluator owns: the model, the task objects, per-sample logs
# and the split's documents; a request cache would hand one candidate another's answers.
_OWNED = {"model", "model_args", "tasks", "task_manager", "log_samples", "samples",
          "use_cache", "cache_requests", "rewrite_requests_cache", "delete_requests_cache",
          "evaluation_tracker", "batch_size", "device"}


def _quiet_lm_eval() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - lm-eval depends on datasets
        pass


@contextlib.contextmanager
def _per_candidate_call():
    """What a search does not need thousands of times, skipped for one simple_evaluate call:
    the git hash and torch's environment report it records in every result (processes spawned
    per candidate, and git's complaints outside a repository), and its progress bars (one set
    per candidate would bury the search's own progress)."""
    import importlib

    patched: list[tuple[Any, str, Any]] = []

    def patch(mod: Any, attr: str, value: Any) -> None:
        if hasattr(mod, attr):
            patched.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, value)

    ev = importlib.import_module("lm_eval.evaluator")
    patch(ev, "get_git_commit_hash", lambda: None)
    patch(ev, "add_env_info", lambda storage: None)
    for name in ("lm_eval.models.huggingface", "lm_eval.api.task", "lm_eval.api.model"):
        try:
            mod = importlib.import_module(name)
        except ImportError:  # pragma: no cover - moved in a later lm-eval
            continue
        if hasattr(mod, "tqdm"):
            patch(mod, "tqdm", _silent(mod.tqdm))
    try:
        yield
    finally:
        for mod, attr, value in reversed(patched):
            setattr(mod, attr, value)


def _silent(bar: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return bar(*args, **kwargs)

    return make


class _Side:
    """One split's task objects and how their result names map to the search tasks' names."""

    def __init__(self, objs: list[Any], rename: dict[str, str], samples: dict | None):
        self.objs, self.rename, self.samples = objs, rename, samples


class LMEvalEvaluator(Evaluator):
    """Scores a live model on lm-eval harness tasks, their task objects built once per worker."""

    chooses_items = True

    def __init__(self, spec: Any, origin: str = "<config>"):
        super().__init__(spec.name)
        self.spec = spec
        where = f"{origin}: evaluators.{spec.name}"
        self.where = where
        bad = sorted(set(spec.options) & _OWNED)
        if bad:
            raise EvaluatorError(f"{where}.options.{bad[0]}: set by evomerge itself "
                                 "(the live model, its task objects and per-sample logs)")
        import inspect

        import lm_eval

        known = set(inspect.signature(lm_eval.simple_evaluate).parameters)
        unknown = sorted(set(spec.options) - known)
        if unknown:
            raise EvaluatorError(f"{where}.options.{unknown[0]}: not an argument of "
                                 f"lm_eval.simple_evaluate (lm-eval {_version()})")
        _quiet_lm_eval()
        from lm_eval.tasks import TaskManager

        for i, p in enumerate(spec.include_path):
            if not Path(p).is_dir():
                raise EvaluatorError(f"{where}.include_path[{i}]: {p} is not a directory")
        defaults = spec.include_defaults if spec.include_defaults is not None else \
            not spec.include_path
        self.tm = TaskManager(include_path=list(spec.include_path) or None,
                              include_defaults=defaults)
        search = [self._load(t, f"{where}.tasks[{i}]") for i, t in enumerate(spec.tasks)]
        self.leaves = {t.task_name: t for objs, _ in search for t in objs}
        objs = list(self.leaves.values())
        if spec.heldout_tasks is not None:
            held_objs, rename = self._paired(search, spec.heldout_tasks,
                                             f"{where}.heldout_tasks")
            self.sides = {"search": _Side(objs, {}, None),
                          "heldout": _Side(held_objs, rename, None)}
        else:
            cut = {}
            for name, task in self.leaves.items():
                n = len(task.eval_docs)
                k = n - max(1, round(n * spec.heldout_fraction))
                if k < 1:
                    raise EvaluatorError(f"{where}.heldout_fraction: task {name} has {n} "
                                         "documents, too few to split")
                cut[name] = (list(range(k)), list(range(k, n)))
            limit = spec.options.get("limit")
            self.sides = {s: _Side(objs, {}, {name: _limited(ids[j], limit)
                                              for name, ids in cut.items()})
                          for j, s in enumerate(("search", "heldout"))}
        if spec.validation_tasks is not None:
            val_objs, rename = self._paired(search, spec.validation_tasks,
                                            f"{where}.validation_tasks")
            self.sides["validation"] = _Side(val_objs, rename, None)
        elif spec.validation_fraction is not None:
            self._cut_validation(spec.validation_fraction, spec.options.get("limit"), where)
        self._metrics = self._known_metrics()
        self._lm: Any = None
        self._lm_model: Any = None

    def _paired(self, search: list[tuple[list[Any], list[str]]], specs: list[str], where: str
                ) -> tuple[list[Any], dict[str, str]]:
        """Task objects of another split, paired in order with the search tasks, and how
        their names map to the search tasks' names (so metrics keep one name)."""
        other = [self._load(t, f"{where}[{i}]") for i, t in enumerate(specs)]
        rename = {}
        for i, ((_, sn), (_, on)) in enumerate(zip(search, other, strict=True)):
            if len(sn) != len(on):
                raise EvaluatorError(f"{where}[{i}]: {len(on)} tasks inside, against "
                                     f"{len(sn)} in tasks[{i}]")
            rename.update(zip(on, sn, strict=True))
        return [o for objs, _ in other for o in objs], rename

    def _cut_validation(self, fraction: float, limit: Any, where: str) -> None:
        """The leading share of each held-out task's documents becomes the validation split,
        the rest stays the test split."""
        held = self.sides["heldout"]
        val: dict[str, list[int]] = {}
        test: dict[str, list[int]] = {}
        for task in held.objs:
            name = task.task_name
            if held.samples is not None:
                ids = list(held.samples[name])
            else:
                ids = _limited(list(range(len(task.eval_docs))), limit)
            k = cut_validation(len(ids), fraction, f"{where} (task {name})")
            val[name], test[name] = ids[:k], ids[k:]
        self.sides["validation"] = _Side(held.objs, held.rename, val)
        self.sides["heldout"] = _Side(held.objs, held.rename, test)

    def _load(self, spec: str, where: str) -> tuple[list[Any], list[str]]:
        """One task spec's leaf task objects and their names, in order."""
        looks_like_path = spec.endswith((".yaml", ".yml")) or "/" in spec
        if looks_like_path and not Path(spec).is_file():
            raise EvaluatorError(f"{where}: task file {spec} does not exist")
        try:
            loaded = self.tm.load([spec])
        except KeyError:
            hint = ("" if self.tm.include_path else
                    "; give include_path for your own task YAMLs")
            raise EvaluatorError(f"{where}: {spec!r} is not a known lm-eval task or task "
                                 f"file{hint}") from None
        except Exception as exc:  # dataset files missing, bad YAML, ...
            raise EvaluatorError(f"{where}: lm-eval could not build {spec!r}: "
                                 f"{type(exc).__name__}: {exc}") from None
        # Groups are evaluated through their leaf tasks (objectives name leaf tasks' metrics).
        tasks = list(loaded["tasks"].values())
        return tasks, [t.task_name for t in tasks]

    def _known_metrics(self) -> list[str]:
        out = []
        for name, task in self.leaves.items():
            filters = [f.name for f in getattr(task, "_filters", [])] or ["none"]
            for metric in task._metric_fn_list:
                out += [_metric_name(name, metric, f) for f in filters]
            if task.OUTPUT_TYPE == "multiple_choice":
                out.append(f"{name}/p_correct")
            if task.OUTPUT_TYPE == "loglikelihood":
                out.append(f"{name}/p_answer")
        return out

    def metrics(self) -> list[str]:
        """The tasks' `task/metric[,filter]` names, plus p_correct / p_answer where they apply."""
        return list(self._metrics)

    @staticmethod
    def _leading_docs(side: _Side, fraction: float, options: dict[str, Any]
                      ) -> dict[str, list[int]]:
        """The leading share of each task's documents (of the split's ids, or of `limit`)."""
        out = {}
        for task in side.objs:
            name = task.task_name
            if side.samples is not None and name in side.samples:
                ids = list(side.samples[name])
            else:
                n = len(task.eval_docs)
                limit = options.get("limit")
                if limit is not None:
                    n = min(n, int(limit if limit >= 1 else limit * n))
                ids = list(range(n))
            out[name] = ids[:leading(len(ids), fraction)]
        return out

    def _hflm(self, model: Any, tokenizer: Any) -> Any:
        if self._lm is None or self._lm_model is not model:
            from lm_eval.models.huggingface import HFLM

            with _quiet_stderr_warnings():
                self._lm = HFLM(pretrained=model, tokenizer=tokenizer,
                                batch_size=self.spec.batch_size, **self.spec.model_options)
            self._lm_model = model
        return self._lm

    def evaluate(self, model: Any, tokenizer: Any, split: Split, fraction: float = 1.0,
                 items: dict[str, list[int]] | None = None) -> Evaluation:
        """Run simple_evaluate on the split's documents; per-sample scores from its sample logs.
        With `items`, only the tasks they name, on the documents at those positions."""
        side = self.sides[split]
        options = {"bootstrap_iters": 0, "verbosity": "ERROR", **self.spec.options}
        if items is not None:
            union = chosen_items(items, _task_of)
            ids = self._leading_docs(side, 1.0, options)
            unknown = sorted(set(union) - set(ids))
            if unknown:
                raise EvaluatorError(f"evaluators.{self.name}: no task {unknown[0]!r} on the "
                                     f"{split} split (it has {sorted(ids)})")
            options.pop("limit", None)
            objs = [t for t in side.objs if t.task_name in union]
            scored = self._run(side, objs, {t: [ids[t][p] for p in union[t]] for t in union},
                               model, tokenizer, options)
            return Evaluation(scored.metrics, pick_items(scored.samples, union, items,
                                                         _task_of, f"evaluators.{self.name}"))
        samples = side.samples if fraction >= 1 else self._leading_docs(side, fraction,
                                                                         options)
        if samples is not None:
            options.pop("limit", None)  # already applied to the split's document ids
        return self._run(side, side.objs, samples, model, tokenizer, options)

    def _run(self, side: _Side, objs: list[Any], samples: dict[str, list[int]] | None,
             model: Any, tokenizer: Any, options: dict[str, Any]) -> Evaluation:
        """One simple_evaluate call; metrics and per-document scores (in document order) under
        the search tasks' names."""
        import lm_eval

        with _per_candidate_call():
            out = lm_eval.simple_evaluate(
                model=self._hflm(model, tokenizer), tasks=objs, task_manager=self.tm,
                log_samples=True, samples=samples, **options)
        if out is None:
            raise EvaluatorError(f"evaluators.{self.name}: lm-eval returned no results")
        metrics: dict[str, float] = {}
        for task, values in out["results"].items():
            name = side.rename.get(task, task)
            for key, v in values.items():
                metric, _, filt = key.partition(",")
                if metric.endswith("_stderr") or not filt or not _is_number(v):
                    continue
                metrics[_metric_name(name, metric, filt)] = float(v)
        samples: dict[str, np.ndarray] = {}
        for task, rows in out.get("samples", {}).items():
            name = side.rename.get(task, task)
            rows = sorted(rows, key=lambda r: r["doc_id"])
            for metric in rows[0].get("metrics", []) if rows else []:
                by_filter: dict[str, list[float]] = {}
                for r in rows:
                    if _is_number(r.get(metric)):
                        by_filter.setdefault(r["filter"], []).append(float(r[metric]))
                for filt, vals in by_filter.items():
                    samples[_metric_name(name, metric, filt)] = np.asarray(vals, np.float32)
            p = _choice_probabilities(rows)
            if p is not None:
                samples[f"{name}/p_correct"] = p
                metrics[f"{name}/p_correct"] = float(p.mean())
            p = _answer_probabilities(rows)
            if p is not None:
                samples[f"{name}/p_answer"] = p
                metrics[f"{name}/p_answer"] = float(p.mean())
        return Evaluation(metrics, samples)


def _answer_probabilities(rows: list[dict]) -> np.ndarray | None:
    """Per document of a loglikelihood task, the probability of the whole answer: a
    continuous twin of its exact match (`acc`). None for other task types."""
    def loglikelihood(row: dict) -> float | None:
        resp = row.get("filtered_resps") or []
        first = resp[0] if len(resp) == 1 else None
        if isinstance(first, list | tuple) and len(first) == 2 and _is_number(first[0]) \
                and isinstance(first[1], bool):
            return float(first[0])
        return None

    values = [loglikelihood(r) for r in rows]
    if not rows or any(v is None for v in values):
        return None
    return np.exp(np.asarray(values, dtype=np.float64)).astype(np.float32)


def _task_of(metric: str) -> str:
    """The task a `task/metric[,filter]` name belongs to."""
    return metric.split("/", 1)[0]


def _metric_name(task: str, metric: str, filt: str) -> str:
    return f"{task}/{metric}" if filt == "none" else f"{task}/{metric},{filt}"


def _limited(ids: list[int], limit: Any) -> list[int]:
    if limit is None:
        return ids
    n = int(limit) if limit >= 1 else int(math.ceil(len(ids) * float(limit)))
    return ids[:n]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) \
        and math.isfinite(float(v))


def _choice_probabilities(rows: list[dict[str, Any]]) -> np.ndarray | None:
    """p(gold choice) among the choices, from each multiple-choice document's log-likelihoods
    (the unfiltered ones: one entry per choice)."""
    out = []
    seen = set()
    for r in rows:
        if r["doc_id"] in seen:
            continue
        seen.add(r["doc_id"])
        resps = r.get("filtered_resps")
        gold = r.get("target")
        if not isinstance(resps, list) or not resps or not isinstance(gold, int):
            return None
        if not all(isinstance(x, (tuple, list)) and _is_number(x[0]) for x in resps):
            return None
        ll = np.array([float(x[0]) for x in resps])
        if not 0 <= gold < len(ll):
            return None
        z = np.exp(ll - ll.max())
        out.append(z[gold] / z.sum())
    return np.asarray(out, dtype=np.float32) if out else None


@contextlib.contextmanager
def _quiet_stderr_warnings():
    """HFLM warns, once per construction, that a model object was passed instead of a name:
    that is exactly what evomerge means to do."""
    logger = logging.getLogger("lm_eval.models.huggingface")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _version() -> str:
    from importlib.metadata import version

    return version("lm_eval")
