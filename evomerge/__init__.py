"""evomerge: evolutionary search for model-merge recipes, and the merge engine under it."""

__version__ = "0.1.0"
