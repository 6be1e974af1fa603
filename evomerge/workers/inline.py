"""The inline executor: one worker in the driver process, jobs in order (deterministic
replay, no serialisation, nothing to start)."""

from __future__ import annotations

from collections.abc import Iterator

from evomerge.tasks.base import Task
from evomerge.workers.base import Executor, Job, Outcome, evaluate_job


class InlineExecutor(Executor):
    def __init__(self, task: Task):
        self.worker = task.worker()  # built now: a worker that cannot start fails the run here

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, Outcome]]:
        for job in jobs:
            yield job, evaluate_job(self.worker, job)

    def close(self) -> None:
        self.worker.close()
