"""Tasks: what is searched (space), how a candidate is scored (evaluators) and what "better"
means (objectives). The search loop builds whichever task the config names through
`evomerge.tasks.registry.build_task` and never branches on its kind."""
