"""What a person (or a script) wants to know about a run, read from its directory alone: the
front is rebuilt from the trial log, so the report is right even for a run that was killed
or is still running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.run.directory import RunDirectory
from evomerge.run.loop import Timing
from evomerge.run.trial_log import archive_from_lines, is_full
from evomerge.search_config import SearchConfig
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
              "heldout": by_trial[e.trial_id].get("heldout")} for e in archive.front()]
    timing = Timing(**saved["timing"]) if saved else Timing()
    summaries = _recipe_summaries(files, cfg, [by_trial[e["trial"]] for e in front])
    for entry in front:
        entry["recipe"] = summaries.get(entry["trial"])
    n = max(len(lines), 1)
    return {
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
        "best": front[0] if front else None,
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


def _recipe_summaries(files: RunDirectory, cfg: SearchConfig, lines: list[dict[str, Any]]
                      ) -> dict[int, str]:
    """A short description of each front member's recipe (merge runs; {} otherwise)."""
    if cfg.task.kind != "merge" or not lines:
        return {}
    try:
        task = build_task(cfg, str(files.config_path), prepare=False)
        return {x["trial"]: task.decode(np.asarray(x["genome"])).summary() for x in lines
                if "genome" in x}
    except (ConfigError, ValueError, OSError):
        return {}  # the sources moved: the table still has the scores


def _worker_use(lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Busy time over wall time across the workers (trials run on Ray carry `worker` and
    `started`); None for a run evaluated inline."""
    timed = [x for x in lines if "worker" in x and "started" in x]
    if not timed:
        return None
    workers = sorted({x["worker"] for x in timed})
    span = max(x["started"] + x["seconds"] for x in timed) - min(x["started"] for x in timed)
    busy = sum(x["seconds"] for x in timed)
    return {"count": len(workers), "nodes": len({x.get("node") for x in timed}),
            "utilisation": busy / (len(workers) * span) if span > 0 else None,
            "trials": {str(w): sum(1 for x in timed if x["worker"] == w) for w in workers}}


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
