"""Executors: where candidates are evaluated (DESIGN §2). The loop hands an executor jobs and
collects outcomes as they finish; `inline` evaluates in the driver process."""

from evomerge.workers.base import Executor, Job, Outcome, evaluate_job
from evomerge.workers.inline import InlineExecutor

__all__ = ["Executor", "InlineExecutor", "Job", "Outcome", "evaluate_job"]
