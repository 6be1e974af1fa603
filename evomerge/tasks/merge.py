"""The merge task: genomes → recipes over real source models → one live model per worker →
evaluators → named objectives and per-sample scores.

Everything that can be wrong with a config (a missing source, sources that do not fit
together, a missing evaluator file, an objective nobody produces) is found here, when the
task is built, before the first evaluation.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.evaluate.base import Evaluator, EvaluatorError
from evomerge.evaluate.registry import build_evaluator
from evomerge.merge.errors import MergeError
from evomerge.merge.options import MergeOptions
from evomerge.merge.sources import check_compatible, open_models
from evomerge.merge_methods import get_method
from evomerge.recipe import Recipe
from evomerge.search.protocol import ControllerSetup
from evomerge.search_config import BaselineSpec
from evomerge.tasks.base import AnchorItems, Baseline, Task, TaskWorker


class MergeWorker(TaskWorker):
    """Resident sources + one live model + the evaluators, built once."""

    def __init__(self, spec: Any, evaluators: dict[str, Evaluator], needs_scores: bool,
                 anchors: bool = False):
        self.spec = spec
        self.builder = BUILDERS[spec.space.kind](spec)
        self.tokenizer = self.builder.tokenizer()
        self.evaluators = evaluators
        self.needs_scores = needs_scores
        self.sample_scores = spec.sample_scores
        # the anchor-point fidelity: full search evaluations return the objectives' own
        # per-item scores, which the driver learns its anchors from
        self.anchors = anchors

    def evaluate(self, payload: Recipe, split: str, fraction: float = 1.0,
                 items: AnchorItems | None = None):
        """Build the recipe's model, run every evaluator, and pick out the objectives and scores
        (with `items`: the objectives estimated from the anchor items' weighted scores)."""
        t0 = time.perf_counter()
        model = self.builder.build(payload)
        t1 = time.perf_counter()
        if items is not None:
            metrics = self._anchor_metrics(model, split, items)
            extra = {"build_seconds": round(t1 - t0, 6),
                     "eval_seconds": round(time.perf_counter() - t1, 6),
                     "anchor_items": sum(len(p) for p, _ in items.values())}
            return self._objectives(metrics, split), None, extra
        outs = {name: ev.evaluate(model, self.tokenizer, split, fraction)
                for name, ev in self.evaluators.items()}
        t2 = time.perf_counter()
        objectives = self._objectives({n: out.metrics for n, out in outs.items()}, split)
        extra: dict[str, Any] = {"build_seconds": round(t1 - t0, 6),
                                 "eval_seconds": round(t2 - t1, 6)}
        search = split == "search"
        if not search or (self.anchors and fraction >= 1):
            # per item of every metric an objective reads: paired tests, and the anchors
            scores, extra["score_parts"] = self._objective_items(outs, search)
            if search:
                self._check_means(outs, extra["score_parts"], scores)
            return objectives, scores, extra
        scores = self._scores(outs)
        if self.needs_scores and scores is None:
            raise EvaluatorError("M2N2 needs per-sample scores, and no objective in "
                                 "task.sample_scores has them")
        return objectives, scores, extra

    def _anchor_metrics(self, model: Any, split: str, items: AnchorItems
                        ) -> dict[str, dict[str, float]]:
        """Per evaluator, each metric estimated as its anchors' weighted mean score."""
        wanted: dict[str, dict[str, list[int]]] = {}
        for key, (positions, _) in items.items():
            ev, _, metric = key.partition(":")
            wanted.setdefault(ev, {})[metric] = list(positions)
        metrics: dict[str, dict[str, float]] = {}
        for ev, chosen in wanted.items():
            out = self.evaluators[ev].evaluate(model, self.tokenizer, split, items=chosen)
            metrics[ev] = {m: float(np.dot(np.asarray(items[f"{ev}:{m}"][1]),
                                           np.asarray(out.samples[m], dtype=np.float64)))
                           for m in chosen}
        return metrics

    def _check_means(self, outs: dict[str, Any], parts: list[list[Any]],
                     scores: np.ndarray | None) -> None:
        """The anchors estimate a metric as a weighted mean of its items: each objective
        metric must be the plain mean of its per-item scores (accuracy is; perplexity is not)."""
        assert scores is not None
        at = 0
        for key, n in parts:
            ev, _, metric = key.partition(":")
            mean = float(np.mean(scores[at: at + n]))
            at += n
            if abs(mean - outs[ev].metrics[metric]) > 1e-4:
                raise EvaluatorError(f"fidelity.anchors: {key} is "
                                     f"{outs[ev].metrics[metric]:.6g}, not the mean of its "
                                     f"per-item scores ({mean:.6g}), so anchors cannot "
                                     "estimate it")
        missing = [f"{o.evaluator}:{m}" for o in self.spec.objectives for m in o.search_parts
                   if not any(p[0] == f"{o.evaluator}:{m}" for p in parts)]
        if missing:
            raise EvaluatorError(f"fidelity.anchors: {missing[0]} has no per-item scores, so "
                                 "anchors cannot estimate it")

    def _objectives(self, metrics: dict[str, dict[str, float]], split: str
                    ) -> dict[str, float]:
        """Each objective from its evaluator's metrics."""
        objectives: dict[str, float] = {}
        search = split == "search"
        for o in self.spec.objectives:
            value = o.value(metrics[o.evaluator], search)
            parts = o.search_parts if search else o.parts
            if value is None:
                raise EvaluatorError(f"objective {o.name}: evaluator {o.evaluator} returned no "
                                     f"metric {parts} (it returned "
                                     f"{sorted(metrics[o.evaluator])})")
            if not math.isfinite(value):
                raise EvaluatorError(f"objective {o.name}: {'/'.join(parts)} is {value}")
            objectives[o.name] = float(value)
        return objectives

    def _objective_items(self, outs: dict[str, Any], search: bool = False
                         ) -> tuple[np.ndarray | None, list[list[Any]]]:
        """Per-item scores of the metrics the objectives read (`evaluator:metric`, those
        that have them), concatenated, and the [name, items] parts in order."""
        parts: list[list[Any]] = []
        arrays = []
        for o in self.spec.objectives:
            for m in (o.search_parts if search else o.parts):
                key = f"{o.evaluator}:{m}"
                s = outs[o.evaluator].samples.get(m)
                if s is None or any(p[0] == key for p in parts):
                    continue
                parts.append([key, int(np.asarray(s).size)])
                arrays.append(np.asarray(s, dtype=np.float32))
        return (np.concatenate(arrays) if arrays else None), parts

    def _scores(self, outs: dict[str, Any]) -> np.ndarray | None:
        names = self.sample_scores or [o.name for o in self.spec.objectives
                                       if o.direction == "maximize" and o.metric]
        parts = []
        for entry in names:
            ev, metric = self.spec.score_source(entry)
            s = outs[ev].samples.get(metric)
            if s is None:
                if self.sample_scores:
                    raise EvaluatorError(f"sample_scores: {entry} ({ev}: {metric}) has no "
                                         "per-sample scores")
                continue
            parts.append(np.asarray(s, dtype=np.float32))
        return np.concatenate(parts) if parts else None

    def close(self) -> None:
        """Release the builder's resident sources and live model."""
        self.builder.close()


def _merge_builder(spec: Any) -> Any:
    """Parameter merges: resident sources, merged weights written into one live model."""
    from evomerge.merge.inplace import CandidateBuilder

    c = spec.candidate
    return CandidateBuilder(spec.base, spec.sources, dtype=c.dtype, device=c.device,
                            threads=c.merge_threads, allow_pickle=spec.allow_pickle,
                            allow_download=spec.allow_download,
                            cache_bytes=None if c.selection_cache_gib is None
                            else int(c.selection_cache_gib * 2**30))


def _route_builder(spec: Any) -> Any:
    """Layer routes: resident sources, one skeleton re-pointed at their layers."""
    from evomerge.merge.routed import RouteBuilder

    c = spec.candidate
    return RouteBuilder(spec.sources, dtype=c.dtype, device=c.device,
                        allow_pickle=spec.allow_pickle, allow_download=spec.allow_download)


# space kind → what turns its recipes into a live model (build, check, tokenizer, close)
BUILDERS = {"ps": _merge_builder, "seed_mixture": _merge_builder, "dfs": _route_builder}


class MergeTask(Task):
    """Genomes → merge recipes over the config's sources, scored by its evaluators."""

    def __init__(self, cfg: Any, origin: str = "<config>", prepare: bool = True):
        self.cfg = cfg
        self.spec = spec = cfg.task
        self.origin = origin
        self.objectives, self.reference_point = self.objectives_of(cfg)
        self.has_validation = all(ev.has_validation for ev in spec.evaluators)
        self.space = self._space()
        self.evaluators: dict[str, Evaluator] = {}
        self._worker: MergeWorker | None = None
        if prepare:
            self._check_sources()
            for i, ev_spec in enumerate(spec.evaluators):
                try:
                    self.evaluators[ev_spec.name] = build_evaluator(ev_spec, origin)
                except EvaluatorError as exc:
                    raise ConfigError(str(exc)) from None
                except Exception as exc:
                    raise ConfigError(f"{origin}: task.evaluators[{i}] ({ev_spec.name}): "
                                      f"{type(exc).__name__}: {exc}") from None
            for i, o in enumerate(spec.objectives):
                known = self.evaluators[o.evaluator].metrics()
                for m in [*o.parts, *o.search_parts]:
                    if m not in known:
                        key = ("metric" if o.metric else "metrics") if m in o.parts else \
                            ("search_metric" if o.search_metric else "search_metrics")
                        raise ConfigError(f"{origin}: task.objectives[{i}].{key}: evaluator "
                                          f"{o.evaluator!r} produces no {m!r} (it produces "
                                          f"{known})")
            for i, entry in enumerate(spec.sample_scores or []):
                ev, metric = spec.score_source(entry)
                if metric not in self.evaluators[ev].metrics():
                    raise ConfigError(f"{origin}: task.sample_scores[{i}]: evaluator {ev!r} "
                                      f"produces no {metric!r}")

    # --- building --------------------------------------------------------------------------
    def _space(self) -> Any:
        s, t = self.spec.space, self.spec
        dtype = t.candidate.dtype
        try:
            if s.kind == "seed_mixture":
                from evomerge.space.mixture import SeedMixtureSpace

                return SeedMixtureSpace(t.sources, s.groups, s.coefficient_range, dtype)
            if s.kind == "dfs":
                from evomerge.space.dataflow import DataFlowSpace

                return DataFlowSpace([(ref, n) for ref, n in zip(t.sources, self._layer_counts(),
                                                                strict=True)],
                                     repeats=s.repeats, scale_mode=s.scale_mode,
                                     sigma=s.sigma, scale_range=s.scale_range)
            from evomerge.space.parameter import ParameterSpace

            return ParameterSpace(t.sources, base=t.base, method=s.method, methods=s.methods,
                                  groups=s.groups, kinds=s.kinds, ranges=dict(s.ranges),
                                  search_lambda=s.search_lambda, dtype=dtype, seed=s.seed)
        except ValueError as exc:
            raise ConfigError(f"{self.origin}: task.space: {exc}") from None

    @contextlib.contextmanager
    def _opened_sources(self) -> Iterator[list[Any]]:
        """The sources' headers, opened (errors name task.sources)."""
        t = self.spec
        recipe = Recipe.from_dict({"method": "linear",
                                   "sources": [{"model": s} for s in t.sources]}, self.origin)
        try:
            _, models = open_models(recipe, MergeOptions(allow_pickle=t.allow_pickle,
                                                         allow_download=t.allow_download))
        except MergeError as exc:
            raise ConfigError(f"{self.origin}: task.sources: {exc}") from None
        try:
            yield models
        except MergeError as exc:
            raise ConfigError(f"{self.origin}: task.{exc}") from None
        finally:
            for m in models:
                m.close()

    def _layer_counts(self) -> list[int]:
        """Decoder layers of each source, from its headers."""
        from evomerge.merge.routing import SourceLayout

        with self._opened_sources() as models:
            return [SourceLayout.of(m, f"sources[{i}]").num_layers
                    for i, m in enumerate(models)]

    def _check_routable(self) -> None:
        """A route through every source: the sources' layers can run in one stream."""
        from evomerge.merge.routing import RoutePlan

        last = self.space.layers[0] - 1  # counted when the space was built
        with self._opened_sources() as models:
            hops = [{"source": i, "layer": 0} for i in range(len(models))]
            probe = Recipe.from_dict({"method": "passthrough",
                                      "route": [*hops, {"source": 0, "layer": last}],
                                      "sources": [{"model": s} for s in self.spec.sources]},
                                     self.origin)
            RoutePlan(probe, models)

    def _check_sources(self) -> None:
        """Open every source's headers: they exist, share an architecture, tensor names and
        shapes, and a tokenizer (a route: layers that can run in one stream)."""
        t = self.spec
        if t.space.kind == "dfs":
            self._check_routable()
            return
        probe = {"method": "linear", "sources": [{"model": s} for s in t.sources]}
        if t.base:
            probe["base"] = t.base
        try:
            recipe = Recipe.from_dict(probe, self.origin)
            base, sources = open_models(recipe, MergeOptions(allow_pickle=t.allow_pickle,
                                                             allow_download=t.allow_download))
        except MergeError as exc:
            raise ConfigError(f"{self.origin}: task.sources: {exc}") from None
        models = ([base] if base else []) + sources
        try:
            check_compatible(models)
            _check_tokenizers(models, self.origin)
        except MergeError as exc:
            raise ConfigError(f"{self.origin}: task.sources: {exc}") from None
        finally:
            for m in models:
                m.close()

    @staticmethod
    def objectives_of(cfg: Any) -> tuple[list[tuple[str, str]], dict[str, float]]:
        """The config's objectives; a reference point not given is 0."""
        objs = [(o.name, o.direction) for o in cfg.task.objectives]
        ref = {o.name: (o.reference if o.reference is not None else 0.0)
               for o in cfg.task.objectives}
        return objs, ref

    def controller_setup(self, controller_kind: str, population: int) -> ControllerSetup:
        """The space's start and box; M2N2 also gets seeds or random box points for its archive."""
        sp = self.space
        x0 = sp.initial()
        if controller_kind != "m2n2":
            return ControllerSetup(x0, sp.lower, sp.upper, [x0])
        if self.spec.space.kind == "seed_mixture":
            from evomerge.search.m2n2 import SeedMixtures

            return ControllerSetup(x0, sp.lower, sp.upper, sp.seeds(),
                                   SeedMixtures(self.gram()))
        # M2N2 over PS genomes: the centre plus random points of the box fill the archive
        rng = np.random.default_rng(self.cfg.seed)
        initial = [x0] + [rng.uniform(sp.lower, sp.upper) for _ in range(population - 1)]
        return ControllerSetup(x0, sp.lower, sp.upper, initial)

    def gram(self) -> np.ndarray:
        """Per-layer-group Gram matrices of the seeds (float64), for M2N2's SLERP of seed
        mixtures: one pass over the weights, once per run."""
        from evomerge.models.architecture import count_layers, tensor_site

        t = self.spec
        recipe = Recipe.from_dict({"method": "linear",
                                   "sources": [{"model": s} for s in t.sources]})
        _, models = open_models(recipe, MergeOptions(allow_pickle=t.allow_pickle,
                                                     allow_download=t.allow_download))
        g_count = self.spec.space.groups
        k = len(models)
        gram = np.zeros((g_count, k, k))
        try:
            ref = models[0]
            layers = count_layers(list(ref.entries), ref.config)
            for name, entry in ref.entries.items():
                if not entry.dtype.is_floating_point:
                    continue
                site = tensor_site(name, layers)
                g = min(g_count - 1, int(site.group_position * g_count))
                flat = np.stack([m.read(name).double().reshape(-1).numpy() for m in models])
                gram[g] += flat @ flat.T
        finally:
            for m in models:
                m.close()
        return gram

    def check_anchors(self, where: str) -> None:
        """Anchors need evaluators that score chosen items, and the objectives' own items as
        the run's per-sample scores (which are what the anchors are learned from)."""
        if self.spec.sample_scores:
            raise ConfigError(f"{where}: the anchors are learned from the objectives' own "
                              "per-item scores; leave task.sample_scores out")
        for i, o in enumerate(self.spec.objectives):
            spec = next(e for e in self.spec.evaluators if e.name == o.evaluator)
            ev = self.evaluators.get(o.evaluator)
            if ev is not None and not ev.chooses_items:
                raise ConfigError(f"{where}: task.objectives[{i}] ({o.name}) is scored by "
                                  f"evaluator {o.evaluator!r} (kind {spec.kind}), which cannot "
                                  "score chosen items; use rungs")

    # --- baselines ---------------------------------------------------------------------------
    def baselines(self) -> list[Baseline]:
        """The config's hand-set recipes, or the defaults for its space (docs/design.md §7.5),
        each as a point of the space where the space can express it."""
        kind = self.spec.space.kind
        if kind == "dfs":
            return [] if self.spec.baselines == [] else [
                Baseline("model A alone", self.space.decode(self.space.initial()),
                         self.space.initial())]
        if kind == "seed_mixture":
            if self.spec.baselines is None:
                sp = self.space
                named = [(f"source {k} alone", g) for k, g in enumerate(sp.seeds())]
                return [Baseline(n, sp.decode(g), g) for n, g in
                        [*named, (f"uniform 1/{sp.k}", sp.initial())]]
        specs = self.spec.baselines
        if specs is None:
            specs = default_baselines(len(self.spec.sources), self.spec.base is not None,
                                      self.space)
        return [self._baseline(b) for b in specs]

    def _baseline(self, b: Any) -> Baseline:
        """One hand-set recipe: decoded from its genome when the space can express it (so it
        is exactly the point a controller would propose), else built as it is."""
        try:
            genome = self.space.encode(b.method, b.parameters)
            return Baseline(b.name, self.space.decode(genome), genome)
        except (ValueError, AttributeError) as exc:
            note = str(exc) if isinstance(exc, ValueError) else "not a parameter space"
        t = self.spec
        per_source = {p for p, v in b.parameters.items() if isinstance(v, list)}
        shared = {p: v for p, v in b.parameters.items() if p not in per_source}
        method = get_method(b.method)
        shared_now = {p: v for p, v in shared.items() if p in method.shared_defaults}
        sources = [{"model": ref, "parameters": {
            **{p: v for p, v in shared.items() if p in method.per_source_defaults},
            **{p: b.parameters[p][k] for p in per_source}}}
            for k, ref in enumerate(t.sources)]
        data: dict[str, Any] = {"method": b.method, "sources": sources,
                                "parameters": shared_now, "seed": getattr(t.space, "seed", 0)}
        if t.base and method.needs_base:
            data["base"] = t.base
        if t.candidate.dtype:
            data["dtype"] = t.candidate.dtype
        try:
            recipe = Recipe.from_dict(data, f"{self.origin}: baseline {b.name!r}")
        except Exception as exc:
            raise ConfigError(f"{self.origin}: task.baselines ({b.name}): {exc}") from None
        return Baseline(b.name, recipe, None, note)

    # --- per candidate ---------------------------------------------------------------------
    def decode(self, genome: np.ndarray) -> Recipe:
        """The merge recipe the genome stands for in the config's space."""
        return self.space.decode(genome)

    def cache_key(self, payload: Recipe) -> str:
        """The recipe's digest: genomes that decode to the same recipe are evaluated once."""
        return payload.digest()

    def log_fields(self, genome: np.ndarray, payload: Any) -> dict[str, Any]:
        """The genome and its recipe's digest, so export can tell when the config has changed."""
        fields: dict[str, Any] = {"genome": [float(v) for v in genome]}
        if isinstance(payload, Recipe):
            fields["recipe_digest"] = payload.digest()
        return fields

    def worker(self) -> TaskWorker:
        """The merge worker, built on first use (it loads the sources) and then reused."""
        if self._worker is None:
            try:
                fidelity = self.cfg.fidelity
                self._worker = MergeWorker(self.spec, self.evaluators,
                                           self.cfg.controller.kind == "m2n2",
                                           fidelity is not None and fidelity.anchors is not None)
            except MergeError as exc:
                raise ConfigError(f"{self.origin}: task: {exc}") from None
        return self._worker


def default_baselines(n_sources: int, has_base: bool, space: Any) -> list[Any]:
    """What a person would set by hand: each source alone, task arithmetic at 1 and at 1/n,
    TIES and DARE-TIES at density 0.5 and weight 1 (those that need a base only with one)."""
    methods = list(getattr(space, "methods", []))
    # a source alone, in the space's own terms where it can say it (one weight 1, the rest
    # 0, nothing dropped): then it is also a starting point
    weighted = [m for m in methods if "weight" in get_method(m).per_source_defaults]
    alone = next((m for m in weighted if m in ("task_arithmetic", "linear")),
                 weighted[0] if weighted else "linear")
    out = []
    for k in range(n_sources):
        params: dict[str, Any] = {"weight": [1.0 if i == k else 0.0 for i in range(n_sources)]}
        if "density" in get_method(alone).per_source_defaults:
            params["density"] = 1.0
        out.append(BaselineSpec(name=f"source {k} alone", method=alone, parameters=params))
    if has_base:
        out += [BaselineSpec(name="task arithmetic, weight 1", method="task_arithmetic",
                             parameters={"weight": 1.0}),
                BaselineSpec(name=f"task arithmetic, weight 1/{n_sources}",
                             method="task_arithmetic", parameters={"weight": 1 / n_sources}),
                BaselineSpec(name="TIES, density 0.5, weight 1", method="ties",
                             parameters={"weight": 1.0, "density": 0.5}),
                BaselineSpec(name="DARE-TIES, density 0.5, weight 1", method="dare_ties",
                             parameters={"weight": 1.0, "density": 0.5})]
    return out


def _check_tokenizers(models: list[Any], origin: str) -> None:
    """Sources must share a vocabulary: a merged embedding row means one token for all."""
    from transformers import AutoTokenizer

    vocabs = []
    for m in models:
        try:
            tok = AutoTokenizer.from_pretrained(m.path)
        except Exception as exc:
            raise MergeError(f"{m.path}: no usable tokenizer ({type(exc).__name__}: {exc})"
                             ) from None
        vocabs.append((m.path, tok.get_vocab()))
    ref_path, ref = vocabs[0]
    for path, vocab in vocabs[1:]:
        if vocab != ref:
            diff = sorted(set(vocab.items()) ^ set(ref.items()))[:1]
            raise MergeError(f"{path}: tokenizer differs from {ref_path}'s (e.g. token "
                             f"{diff[0][0]!r}); sources must share a vocabulary")
