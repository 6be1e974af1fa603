"""The task registry: one entry per `task.kind`, the only place that maps a config's task to
its class (docs/design.md §2). A new kind of search is one entry here plus its module.

Each entry names its module, imported when a config of that kind is first met: the merge
task brings torch and the merge engine (a second of start-up), which `evomerge report` on a
synthetic or digits run, and the simulated executor's benchmarks, never need."""

from __future__ import annotations

import importlib
from typing import Any

from evomerge.tasks.base import Task

TASKS: dict[str, str] = {  # kind -> "module:class"
    "merge": "evomerge.tasks.merge:MergeTask",
    "digits": "evomerge.tasks.digits:DigitsTask",
    "synthetic": "evomerge.tasks.synthetic:SyntheticTask",
}


def task_class(kind: str) -> type[Task]:
    """The Task class of a kind (its module imported on first use)."""
    module, name = TASKS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_task(cfg: Any, origin: str = "<config>", prepare: bool = True) -> Task:
    """The task a config names. `prepare=False` skips what needs data or weights (enough to
    decode genomes, e.g. for export); `origin` is the config file errors name."""
    task = task_class(cfg.task.kind)(cfg, origin, prepare)
    fidelity = getattr(cfg, "fidelity", None)
    if prepare and fidelity is not None and fidelity.anchors is not None:
        task.check_anchors(f"{origin}: fidelity.anchors")
    return task


def task_objectives(cfg: Any) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """A config's objectives and reference point, without building data or models."""
    return task_class(cfg.task.kind).objectives_of(cfg)


__all__ = ["TASKS", "build_task", "task_class", "task_objectives"]
