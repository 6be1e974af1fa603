"""What a person watching a search sees: on a terminal, one line rewritten in place; in a log
file, a plain line now and then; nothing with --quiet. Rate and ETA count only this
session's trials (replayed ones cost nothing and would flatter the rate)."""

from __future__ import annotations

import sys
import time
from typing import Literal, TextIO

Mode = Literal["tty", "plain", "quiet"]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(self, mode: Mode | None = None, stream: TextIO | None = None,
                 every: float = 30.0):
        self.stream = stream or sys.stderr
        self.mode: Mode = mode or ("tty" if self.stream.isatty() else "plain")
        self.every = every if self.mode == "plain" else 0.1
        self._last_print = 0.0
        self._width = 0
        self.line = ""

    def start(self, done: int, budget: int, objective: str) -> None:
        self.budget, self.objective = budget, objective
        self._done0, self._t0 = done, time.monotonic()
        self._done, self._best = done, None
        self._last_print = self._t0
        if self.mode == "plain":  # a log shows at once that the search started
            self.stream.write(f"{done}/{budget} trials done; a progress line every "
                              f"{self.every:g} s\n")
            self.stream.flush()

    def update(self, done: int, best: float | None) -> None:
        self._done, self._best = done, best
        now = time.monotonic()
        if self.mode != "quiet" and now - self._last_print >= self.every:
            self._emit(now)

    def _emit(self, now: float) -> None:
        self._last_print = now
        new, spent = self._done - self._done0, now - self._t0
        parts = [f"{self._done}/{self.budget} trials"]
        if new and spent > 0:
            per = spent / new
            parts.append(f"{per:.2f} s/trial" if per >= 1 else f"{1 / per:.1f} trials/s")
            parts.append(f"ETA {_duration(per * (self.budget - self._done))}")
        if self._best is not None:
            parts.append(f"best {self.objective} {self._best:.4g}")
        self.line = "  ".join(parts)
        if self.mode == "tty":
            pad = max(0, self._width - len(self.line))
            self.stream.write("\r" + self.line + " " * pad)
            self._width = len(self.line)
        else:
            self.stream.write(self.line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """The last state, then a newline on a terminal (the next output starts clean)."""
        if self.mode == "quiet" or not hasattr(self, "_t0"):
            return
        if self._done != self._done0 or self.mode == "tty":
            self._emit(time.monotonic())
        if self.mode == "tty":
            self.stream.write("\n")
            self.stream.flush()
