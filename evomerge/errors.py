"""The error every layer raises for a config that cannot run; defined at the bottom so the
controllers, tasks and the config loader all raise the same one, which the CLI prints."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot run; the message names the file and the field at fault."""
