"""The inline executor: one worker in the driver process, jobs in order (deterministic
replay, no serialisation, nothing to start)."""

from __future__ import annotations

from evomerge.tasks.base import Task
from evomerge.workers.base import Executor, Job, Outcome, evaluate_job


class InlineExecutor(Executor):
    capacity = 1

    def __init__(self, task: Task):
        self.worker = task.worker()  # built now: a worker that cannot start fails the run here
        self._jobs: list[Job] = []

    def submit(self, job: Job) -> None:
        self._jobs.append(job)

    def wait(self) -> tuple[Job, Outcome]:
        job = self._jobs.pop(0)
        return job, evaluate_job(self.worker, job)

    def running(self) -> int:
        return len(self._jobs)

    def close(self) -> None:
        self.worker.close()
