"""The one exception of the merge layer, kept apart so every merge module can raise it."""

from __future__ import annotations


class MergeError(ValueError):
    """A merge that cannot proceed; the message names the file, tensor or field at fault."""
