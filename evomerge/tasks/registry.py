"""The task registry: one entry per `task.kind`, the only place that maps a config's task to
its class (docs/design.md §2). A new kind of search is one entry here plus its module."""

from __future__ import annotations

from typing import Any

from evomerge.tasks.base import Task
from evomerge.tasks.digits import DigitsTask
from evomerge.tasks.merge import MergeTask
from evomerge.tasks.synthetic import SyntheticTask

TASKS: dict[str, type[Task]] = {
    "merge": MergeTask,
    "digits": DigitsTask,
    "synthetic": SyntheticTask,
}


def build_task(cfg: Any, origin: str = "<config>", prepare: bool = True) -> Task:
    """The task a config names. `prepare=False` skips what needs data or weights (enough to
    decode genomes, e.g. for export); `origin` is the config file errors name."""
    return TASKS[cfg.task.kind](cfg, origin, prepare)


def task_objectives(cfg: Any) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """A config's objectives and reference point, without building data or models."""
    return TASKS[cfg.task.kind].objectives_of(cfg)


__all__ = ["TASKS", "build_task", "task_objectives"]
