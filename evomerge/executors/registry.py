"""The executor registry: one entry per `executor.kind`, the one place that picks where
candidates are evaluated from the config (docs/design.md §2). A new executor is its module
plus one entry here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evomerge.executors.base import Executor
from evomerge.executors.inline import InlineExecutor
from evomerge.executors.ray_executor import RayExecutor, RaySettings
from evomerge.executors.simulated import simulated_executor
from evomerge.tasks.base import Task


def _inline(cfg: Any, task: Task, origin: str) -> Executor:
    return InlineExecutor(task)


def _ray(cfg: Any, task: Task, origin: str) -> Executor:
    # the actors build their own task from the frozen config: only dicts and payloads travel
    return RayExecutor(cfg.model_dump(mode="json"), origin, ray_settings(cfg))


def _simulated(cfg: Any, task: Task, origin: str) -> Executor:
    e = cfg.executor
    return simulated_executor(task, e.workers, origin, e.median_seconds, e.tail)


EXECUTORS: dict[str, Callable[[Any, Task, str], Executor]] = {
    "inline": _inline,
    "ray": _ray,
    "simulated": _simulated,  # a discrete-event clock: cluster-scale driver measurements
}


def make_executor(cfg: Any, task: Task, origin: str) -> Executor:
    """The config's executor (`executor.kind`), its workers started; `origin` is the config
    file errors name."""
    return EXECUTORS[cfg.executor.kind](cfg, task, origin)


def ray_settings(cfg: Any) -> Any:
    """The Ray executor's settings: one GPU per actor when candidates live on CUDA."""
    e = cfg.executor
    gpus = e.gpus_per_worker
    if gpus is None:
        device = getattr(getattr(cfg.task, "candidate", None), "device", "cpu")
        gpus = 1.0 if device.startswith("cuda") else 0.0
    return RaySettings(workers=e.workers, address=e.address, cpus_per_worker=e.cpus_per_worker,
                       gpus_per_worker=gpus, timeout_s=e.timeout_s,
                       max_failures=e.max_failures,
                       placement_timeout_s=e.placement_timeout_s)


__all__ = ["EXECUTORS", "make_executor", "ray_settings"]
