"""Evaluators: every one returns named objectives and per-sample scores on its search split,
and scores its held-out split only when asked (the search never sees it)."""
