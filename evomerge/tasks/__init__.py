"""Tasks: what is searched (space), how a candidate is scored (evaluators) and what "better"
means (objectives). The search loop builds whichever task the config names through
`build_task` and never branches on its kind."""

from evomerge.tasks.base import Task, TaskWorker, build_task, task_objectives

__all__ = ["Task", "TaskWorker", "build_task", "task_objectives"]
