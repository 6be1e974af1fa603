"""The simulated executor: N workers on a discrete-event clock, for measuring the driver and
the controllers at cluster scale on one machine (docs/design.md §2.2).

A job starts on a free virtual worker the moment it is submitted (or, with none free, when
one frees up); the task's cost model (`SimulatedWorker.seconds`) says how long it would run,
and `wait` returns the job that would finish first, advancing the clock to that moment.
Nothing sleeps: the evaluation itself runs at once in this process, so 256 workers and
100,000 trials cost only what the driver and the scoring cost. Trial lines carry the virtual
`started` time (seconds from the run's start), `worker` and `queue_seconds`, so utilisation
reads off the log as it does for Ray. The order outcomes come back in is exact and the same
on every machine: equal finishing times go in submission order."""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.executors.base import Executor, Job, Outcome, WorkerError, evaluate_job
from evomerge.tasks.base import SimulatedWorker, TaskWorker
from evomerge.tasks.synthetic import lognormal_seconds


class DrawnSeconds(SimulatedWorker):
    """A task's own worker with evaluation times drawn as the synthetic task draws them
    (log-normal, from a hash of the candidate, so a replay takes the same time): cheap
    evaluators (digits) studied as if each evaluation took seconds on a cluster."""

    def __init__(self, worker: TaskWorker, median_seconds: float, tail: float):
        self.worker, self.median, self.tail = worker, median_seconds, tail

    def seconds(self, payload: Any, split: str, fraction: float = 1.0) -> float:
        """Log-normal around the median, scaled by the fraction of the split scored."""
        raw = np.ascontiguousarray(payload).tobytes() if isinstance(payload, np.ndarray) \
            else repr(payload).encode()
        return lognormal_seconds(raw + split.encode(), self.median, self.tail) * fraction

    def evaluate(self, payload: Any, split: str, fraction: float = 1.0):
        """The task's own evaluation."""
        return self.worker.evaluate(payload, split, fraction)

    def close(self) -> None:
        """Release the task's worker."""
        self.worker.close()


class SimulatedExecutor(Executor):
    """`capacity` virtual workers sharing one evaluator, on a virtual clock."""

    def __init__(self, worker: SimulatedWorker, workers: int):
        self.worker = worker
        self.capacity = workers
        self.now = 0.0
        self._free = list(range(workers))  # a heap of idle worker indices
        self._queue: deque[tuple[Job, float]] = deque()  # (job, submitted at)
        # (finish time, sequence, worker, job, outcome, started at)
        self._events: list[tuple[float, int, int, Job, Outcome, float]] = []
        self._sequence = 0
        self.busy_seconds = 0.0

    def submit(self, job: Job) -> None:
        """Queue the job; it starts now if a virtual worker is free."""
        self._queue.append((job, self.now))
        self._start()

    def _start(self) -> None:
        while self._free and self._queue:
            job, submitted = self._queue.popleft()
            worker = heapq.heappop(self._free)
            try:
                seconds = float(self.worker.seconds(job.payload, job.split, job.fraction))
                if not (math.isfinite(seconds) and seconds >= 0):
                    raise ValueError(f"the cost model gave {seconds} s")
            except Exception as exc:  # a job the cost model rejects fails, at no time
                outcome, seconds = Outcome(status="failed",
                                           error=f"{type(exc).__name__}: {exc}"), 0.0
            else:
                outcome = evaluate_job(self.worker, job)
            outcome.seconds = seconds
            outcome.extra.update({"worker": worker, "started": round(self.now, 6),
                                  "queue_seconds": round(self.now - submitted, 6)})
            self.busy_seconds += seconds
            heapq.heappush(self._events, (self.now + seconds, self._sequence, worker, job,
                                          outcome, self.now))
            self._sequence += 1

    def wait(self) -> tuple[Job, Outcome]:
        """The job that finishes first; the clock moves to its finishing time."""
        if not self._events:
            raise WorkerError("the simulated executor was waited on with nothing running")
        finish, _, worker, job, outcome, _ = heapq.heappop(self._events)
        self.now = finish
        heapq.heappush(self._free, worker)
        self._start()
        return job, outcome

    def running(self) -> int:
        """Jobs submitted and not yet returned (running or queued)."""
        return len(self._events) + len(self._queue)

    def states(self) -> list[str]:
        """The virtual clock and how many workers are busy."""
        return [f"virtual time {self.now:.1f} s: {len(self._events)} of {self.capacity} "
                f"workers busy, {len(self._queue)} queued"]

    def close(self) -> None:
        """Release what the evaluator holds."""
        self.worker.close()


def simulated_executor(task: Any, workers: int, origin: str,
                       median_seconds: float | None = None, tail: float = 1.0
                       ) -> SimulatedExecutor:
    """The executor over the task's cost model, or, given `median_seconds`, over times drawn
    for any task; a task with neither is refused, named."""
    if median_seconds is not None:
        return SimulatedExecutor(DrawnSeconds(task.worker(), median_seconds, tail), workers)
    try:
        worker = task.simulated_worker()
    except NotImplementedError as exc:
        raise ConfigError(f"{origin}: executor.kind: simulated needs a task with a cost "
                          f"model (the synthetic task) or executor.median_seconds to draw "
                          f"evaluation times; {exc}") from None
    return SimulatedExecutor(worker, workers)


__all__ = ["DrawnSeconds", "SimulatedExecutor", "simulated_executor"]
