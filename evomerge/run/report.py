"""What a person (or a script) wants to know about a run, read from its directory alone: the
front is rebuilt from the trial log, so the report is right even for a run that was killed
or is still running."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.run.directory import RunDirectory
from evomerge.run.loop import Timing
from evomerge.run.trial_log import archive_from_lines, best_line, is_full, item_scores
from evomerge.search_config import SearchConfig
from evomerge.stats import Fold, bootstrap_se, compare
from evomerge.tasks.registry import build_task, task_objectives


def report(run_dir: str | Path) -> dict[str, Any]:
    """The run's counts, front (with held-out scores and recipe summaries), hypervolume,
    errors, worker use and timings."""
    files = RunDirectory.existing(run_dir)
    cfg = files.read_config()
    lines = files.read_log()  # never repairs: a search may be writing it right now
    saved = files.read_state()  # never the checkpoint: a controller's state can be gigabytes
    files.check_log(len(lines), saved["trials"] if saved else None)
    objectives, reference = task_objectives(cfg)
    archive = archive_from_lines(lines, objectives, reference)
    by_trial = {line["trial"]: line for line in lines if line["status"] == "ok" and is_full(line)}
    front = [{"trial": e.trial_id, "objectives": e.values,
              "heldout": by_trial[e.trial_id].get("heldout"),
              "validation": by_trial[e.trial_id].get("validation")} for e in archive.front()]
    chosen = best_line([x for x in lines if "heldout" in x], objectives)
    timing = Timing(**saved["timing"]) if saved else Timing()
    summaries = _recipe_summaries(files, cfg, [by_trial[e["trial"]] for e in front])
    for entry in front:
        entry["recipe"] = summaries.get(entry["trial"])
    n = max(len(lines), 1)
    return {
        **_selection(cfg, lines, objectives),
        "run_dir": str(files.path),
        "name": cfg.name,
        "controller": cfg.controller.kind,
        "trials": len(lines),
        "budget": cfg.budget,
        "failed": sum(1 for x in lines if x["status"] != "ok"),
        "errors": _common_errors(lines),
        "workers": _worker_use(lines),
        "task": cfg.task.kind,
        "cache_hits": sum(1 for x in lines if "cached" in x),
        "low_fidelity": sum(1 for x in lines if not is_full(x)),
        # chosen on the validation split where the run has one (§7.5)
        "best": {k: chosen.get(k) for k in ("trial", "objectives", "heldout", "validation")}
        if chosen else (front[0] if front else None),
        "front": front,
        "hypervolume": {"reference_point": archive.reference_point,
                        "value": archive.history[-1][1] if archive.history else None},
        "plots": [str(p) for p in sorted((files.path / "plots").glob("*.png"))],
        "best_export": str(files.path / "best")
        if (files.path / "best" / "config.json").exists() else None,
        "seconds": {"evaluation": sum(x["seconds"] for x in lines), "wall": timing.wall,
                    "controller_per_trial": timing.controller / n,
                    "logging_per_trial": timing.logging / n},
    }


def _selection(cfg: SearchConfig, lines: list[dict[str, Any]],
               objectives: list[tuple[str, str]]) -> dict[str, Any]:
    """The baselines, the best trial chosen on the validation split (the search split when
    the run has none) with its test scores and standard errors, and the paired comparison of
    the best searched trial with the best baseline on the same test items
    (docs/design.md §7.5)."""
    primary, direction = objectives[0]
    sign = 1.0 if direction == "maximize" else -1.0
    by_trial = {x["trial"]: x for x in lines}
    # a repeated recipe's line holds its first evaluation's scores, not its items
    resolved = [{**x, **{k: by_trial[x["cached"]][k] for k in ("heldout_items",)
                         if k in by_trial.get(x["cached"], {})}} if "cached" in x else x
                for x in lines]
    rescored = [x for x in resolved if "heldout" in x]
    split = "validation" if any("validation" in x for x in lines) else "search"
    folds = _folds(cfg)

    def scored(x: dict[str, Any] | None) -> dict[str, Any] | None:
        if x is None:
            return None
        items = item_scores(x["heldout_items"]) if "heldout_items" in x else {}
        test = {}
        for name, value in x["heldout"].items():
            fold, keys = folds.get(name, (None, []))
            se = None
            if fold is not None and keys and all(k in items for k in keys):
                se = bootstrap_se({k: items[k] for k in keys}, fold)
            test[name] = {"value": value, "se": se}
        return {"trial": x["trial"], "baseline": x.get("baseline"),
                "cached": x.get("cached"), "search": x["objectives"],
                "validation": x.get("validation"), "test": test}

    baselines = [x for x in lines if "baseline" in x]
    searched = best_line(rescored, objectives, "searched")
    base = best_line(rescored, objectives, "baselines")
    comparison = None
    fold, keys = folds.get(primary, (None, []))
    if searched and base and fold is not None and "heldout_items" in searched \
            and "heldout_items" in base:
        a, b = item_scores(searched["heldout_items"]), item_scores(base["heldout_items"])
        if all(k in a and k in b for k in keys):
            d = compare({k: a[k] for k in keys}, {k: b[k] for k in keys}, fold)
            comparison = {"objective": primary, "difference": sign * d.difference,
                          "low": sign * (d.low if sign > 0 else d.high),
                          "high": sign * (d.high if sign > 0 else d.low),
                          "items": d.items, "method": d.method, "p_value": d.p_value,
                          "searched": searched["trial"], "baseline": base["trial"]}
    return {
        "selected_on": split,
        "chosen": scored(best_line(rescored, objectives)),
        "best_searched": scored(searched),
        "best_baseline": scored(base),
        "comparison": comparison,
        "baselines": [{"trial": x["trial"], "name": x["baseline"], "status": x["status"],
                       "start": bool(x.get("genome")), "search": x.get("objectives"),
                       "validation": x.get("validation"), "test": x.get("heldout")}
                      for x in baselines],
    }


def _folds(cfg: SearchConfig) -> dict[str, tuple[Fold, list[str]]]:
    """Per objective of a merge run: how its value follows from its metrics' means, and the
    `evaluator:metric` names of the per-item scores it reads."""
    if cfg.task.kind != "merge":
        return {}
    out: dict[str, tuple[Fold, list[str]]] = {}
    for o in cfg.task.objectives:
        keys = [f"{o.evaluator}:{m}" for m in o.parts]

        def fold(means: Any, o: Any = o, keys: list[str] = keys) -> float | None:
            return o.value({m: means[k] for m, k in zip(o.parts, keys, strict=True)})

        out[o.name] = (fold, keys)
    return out


def _recipe_summaries(files: RunDirectory, cfg: SearchConfig, lines: list[dict[str, Any]]
                      ) -> dict[int, str]:
    """A short description of each front member's recipe (merge runs; {} otherwise)."""
    if cfg.task.kind != "merge" or not lines:
        return {}
    try:
        task = build_task(cfg, str(files.config_path), prepare=False)
        out = {x["trial"]: task.decode(np.asarray(x["genome"])).summary() for x in lines
               if "genome" in x}
        outside = {b.name: b.payload for b in task.baselines() if b.genome is None}
        out.update({x["trial"]: outside[x["baseline"]].summary() for x in lines
                    if "genome" not in x and x.get("baseline") in outside})
        return out
    except (ConfigError, ValueError, OSError):
        return {}  # the sources moved: the table still has the scores


def _worker_use(lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Busy time over wall time across the workers (trials run on Ray carry `worker` and
    `started`); None for a run evaluated inline."""
    timed = [x for x in lines if "worker" in x and "started" in x]
    if not timed:
        return None
    per_worker = Counter(x["worker"] for x in timed)
    span = max(x["started"] + x["seconds"] for x in timed) - min(x["started"] for x in timed)
    busy = sum(x["seconds"] for x in timed)
    return {"count": len(per_worker), "nodes": len({x.get("node") for x in timed}),
            "utilisation": busy / (len(per_worker) * span) if span > 0 else None,
            "trials": {str(w): per_worker[w] for w in sorted(per_worker)}}


def _common_errors(lines: list[dict[str, Any]], limit: int = 3) -> list[dict[str, Any]]:
    """The most frequent failure messages, with counts and the first trial of each."""
    seen: dict[str, dict[str, Any]] = {}
    for x in lines:
        if x["status"] != "ok":
            err = str(x.get("error") or "unknown error")
            entry = seen.setdefault(err, {"error": err, "count": 0, "first_trial": x["trial"]})
            entry["count"] += 1
    return sorted(seen.values(), key=lambda e: -e["count"])[:limit]


__all__ = ["report"]
