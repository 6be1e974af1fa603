"""The Executor seam: jobs in (a decoded candidate and the split to score), outcomes out, in
whatever order they finish. A failing evaluation is an outcome, never an exception: the
search logs it as a failed trial and goes on."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evomerge.tasks.base import AnchorItems, TaskWorker


@dataclass
class Job:
    """What an executor is asked to score: one decoded candidate, on a split, at a fidelity."""
    candidate_id: int
    payload: Any
    split: str = "search"
    fraction: float = 1.0  # of the search split (multi-fidelity rungs); held-out is whole
    # the anchor-point rung: `evaluator:metric` -> (item positions, weights); the fraction is
    # then the share of the search split's items these are
    items: AnchorItems | None = None


def describe_job(job: Job) -> str:
    """'candidate 12 (search, 20%)' for a progress display."""
    what = job.split if job.fraction >= 1 or job.split != "search" \
        else f"search, {job.fraction:.0%}"
    return f"candidate {job.candidate_id} ({what})"


@dataclass
class Outcome:
    """What a job returned: objectives, per-sample scores, or the error that failed it."""
    objectives: dict[str, float] = field(default_factory=dict)
    scores: np.ndarray | None = None
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def evaluate_job(worker: TaskWorker, job: Job) -> Outcome:
    """Run one job on a worker: exceptions and NaN/inf objectives become failed outcomes."""
    t0 = time.perf_counter()
    try:
        chosen = {"items": job.items} if job.items is not None else {}
        objectives, scores, extra = worker.evaluate(job.payload, job.split, job.fraction,
                                                    **chosen)
        bad = [k for k, v in objectives.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"objective {bad[0]} is {objectives[bad[0]]}")
        if scores is not None and not np.all(np.isfinite(scores)):
            raise ValueError("per-sample scores contain NaN or inf")
        return Outcome(objectives, scores, seconds=time.perf_counter() - t0, extra=extra)
    except Exception as exc:  # a failed candidate is logged, never fatal to the run
        return Outcome(status="failed", error=f"{type(exc).__name__}: {exc}",
                       seconds=time.perf_counter() - t0)


class WorkerError(RuntimeError):
    """No worker is left to evaluate on (each failed too often); the run stays resumable."""


class Executor(ABC):
    """Runs up to `capacity` jobs at once: `submit` hands one over (never blocks), `wait`
    blocks until one finishes and returns it with its outcome. The run loop keeps the
    executor full, so a worker gets its next candidate the moment it returns one."""

    capacity: int = 1
    # called now and then while `wait` waits on workers (about once a second on Ray), so a
    # live view keeps redrawing when nothing finishes (a node lost, workers being replaced)
    on_idle: Callable[[], None] | None = None

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Start (or queue) a job; at most `capacity` are running."""

    @abstractmethod
    def wait(self) -> tuple[Job, Outcome]:
        """The next finished job and its outcome (raises WorkerError when none can finish)."""

    @abstractmethod
    def running(self) -> int:
        """Jobs submitted and not yet returned by `wait`."""

    def states(self) -> list[str]:
        """One short line per worker, for a person watching the run."""
        return [f"busy: {self.running()} job(s)" if self.running() else "idle"]

    def close(self) -> None:
        """Stop workers and free what they hold."""
        return None
