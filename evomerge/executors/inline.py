"""The inline executor: one worker in the driver process, jobs in order (deterministic
replay, no serialisation, nothing to start)."""

from __future__ import annotations

from evomerge.executors.base import Executor, Job, Outcome, evaluate_job
from evomerge.tasks.base import Task


class InlineExecutor(Executor):
    """Evaluates jobs one at a time in the driver process, for deterministic replays."""
    capacity = 1

    def __init__(self, task: Task):
        self.worker = task.worker()  # built now: a worker that cannot start fails the run here
        self._jobs: list[Job] = []

    def submit(self, job: Job) -> None:
        """Queue the job; it runs only when `wait` asks for it."""
        self._jobs.append(job)

    def wait(self) -> tuple[Job, Outcome]:
        """Evaluate the oldest queued job now, in this process, and return it."""
        job = self._jobs.pop(0)
        return job, evaluate_job(self.worker, job)

    def running(self) -> int:
        """Jobs queued and not yet evaluated."""
        return len(self._jobs)

    def close(self) -> None:
        """Release what the task's worker holds."""
        self.worker.close()
