"""Executors: where candidates are evaluated (docs/design.md §2). `make_executor` is the one place
that picks one from the config."""

from __future__ import annotations

from typing import Any

from evomerge.workers.base import Executor, Job, Outcome, WorkerError


def make_executor(cfg: Any, task: Any, origin: str) -> Executor:
    """The config's executor: inline, or Ray actors (`executor.kind: ray`)."""
    e = cfg.executor
    if e.kind == "inline":
        from evomerge.workers.inline import InlineExecutor

        return InlineExecutor(task)
    from evomerge.workers.ray_executor import RayExecutor

    return RayExecutor(cfg.model_dump(mode="json"), origin, ray_settings(cfg))


def ray_settings(cfg: Any) -> Any:
    """The Ray executor's settings: one GPU per actor when candidates live on CUDA."""
    from evomerge.workers.ray_executor import RaySettings

    e = cfg.executor
    gpus = e.gpus_per_worker
    if gpus is None:
        device = getattr(getattr(cfg.task, "candidate", None), "device", "cpu")
        gpus = 1.0 if device.startswith("cuda") else 0.0
    return RaySettings(workers=e.workers, address=e.address, cpus_per_worker=e.cpus_per_worker,
                       gpus_per_worker=gpus, timeout_s=e.timeout_s,
                       max_failures=e.max_failures,
                       placement_timeout_s=e.placement_timeout_s)


__all__ = ["Executor", "Job", "Outcome", "WorkerError", "make_executor", "ray_settings"]
