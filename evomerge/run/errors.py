"""The error a run directory raises when it cannot be used as asked."""

from __future__ import annotations


class RunError(ValueError):
    """A run directory that cannot be used as asked; the message names the file at fault."""
