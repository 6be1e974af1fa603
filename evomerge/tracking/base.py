"""The Tracker seam: a search run mirrored to an experiment tracker as it goes.

The run directory is the record; a tracker is a view of it for people watching from
elsewhere. So a tracker must never block or fail the search: every method returns at once,
the work happens on the tracker's own thread, and a tracker that breaks says so once and
stops while the search goes on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any


class Tracker(ABC):
    """Receives the run's events in order; never raises into the search."""

    @abstractmethod
    def start(self, logged: list[dict[str, Any]]) -> None:
        """The run (re)starts: create or reopen the tracked run and send the logged trials
        it does not hold yet (a resume after a kill fills its gaps)."""

    @abstractmethod
    def trial(self, line: dict[str, Any]) -> None:
        """A trial line was just appended to the log."""

    @abstractmethod
    def finish(self, artifacts: dict[str, Path]) -> None:
        """The budget is spent: files to attach (name in the tracker → local path)."""

    @abstractmethod
    def close(self, completed: bool) -> None:
        """The session ends (completed, stopped or interrupted): send what is queued, within
        a bounded time, and mark the tracked run accordingly."""


__all__ = ["Tracker"]
