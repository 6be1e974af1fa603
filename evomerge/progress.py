"""What a person watching a search sees: on a terminal, a live panel (rich) with the counts,
rate, ETA, the best score per objective, the front's size and hypervolume, and what each
worker is doing; in a log file, a plain line now and then; nothing with --quiet. Rate and ETA
count only this session's trials (replayed ones cost nothing and would flatter the rate)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

Mode = Literal["tty", "plain", "quiet"]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Shows a running search's progress: a live panel, plain log lines, or nothing."""
    def __init__(self, mode: Mode | None = None, stream: TextIO | None = None,
                 every: float = 30.0):
        self.stream = stream or sys.stderr
        self.mode: Mode = mode or ("tty" if self.stream.isatty() else "plain")
        self.every = every if self.mode == "plain" else 0.25
        self._last_print = 0.0
        self.line = ""
        self._details: Callable[[], dict[str, Any]] | None = None
        self._live: Any = None

    def start(self, done: int, budget: int, objective: str) -> None:
        """Begin showing a search; rate and ETA count trials from `done` on (not replayed ones)."""
        self.budget, self.objective = budget, objective
        self._done0, self._t0 = done, time.monotonic()
        self._done, self._best = done, None
        self._emitted = done  # the count the last printed line showed
        self._last_print = self._t0
        if self.mode == "plain":  # a log shows at once that the search started
            self.stream.write(f"{done}/{budget} trials done; a progress line every "
                              f"{self.every:g} s\n")
            self.stream.flush()
        elif self.mode == "tty":
            from rich.console import Console
            from rich.live import Live

            # a terminal gives its own width; anything else (a test's buffer) a wide one
            console = Console(file=self.stream,
                              width=None if self.stream.isatty() else 160)
            self._live = Live(self._panel(), console=console, auto_refresh=False,
                              transient=False)
            self._live.start()

    def update(self, done: int, best: float | None,
               details: Callable[[], dict[str, Any]] | None = None) -> None:
        """Record new counts and best score; redraw only when the display is due."""
        self._done, self._best = done, best
        self._details = details or self._details
        now = time.monotonic()
        if self.mode != "quiet" and now - self._last_print >= self.every:
            self._emit(now)

    def refresh(self, details: Callable[[], dict[str, Any]] | None = None) -> None:
        """Redraw when due, counts unchanged: the view stays live while nothing finishes
        (workers being replaced, or waiting for a node)."""
        if hasattr(self, "_t0"):
            self.update(self._done, self._best, details)

    def _emit(self, now: float) -> None:
        self._last_print, self._emitted = now, self._done
        new, spent = self._done - self._done0, now - self._t0
        parts = [f"{self._done}/{self.budget} trials"]
        if new and spent > 0:
            per = spent / new
            parts.append(f"{per:.2f} s/trial" if per >= 1 else f"{1 / per:.1f} trials/s")
            parts.append(f"ETA {_duration(per * (self.budget - self._done))}")
        if self._best is not None:
            parts.append(f"best {self.objective} {self._best:.4g}")
        info = self._details() if self._details is not None else {}
        if info.get("front"):
            parts.append(f"front {info['front']}")
        waiting = [w for w in info.get("workers") or [] if w.startswith("waiting for workers")]
        if waiting:  # nothing finishes meanwhile: say why, in a log too
            parts.append(waiting[0])
        self.line = "  ".join(parts)
        if self.mode == "tty":
            self._live.update(self._panel(info), refresh=True)
        else:
            self.stream.write(self.line + "\n")
            self.stream.flush()

    def _panel(self, info: dict[str, Any] | None = None) -> Any:
        """The live view: the progress line, then best scores, front and workers."""
        from rich.table import Table

        info = info or {}
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("search", self.line or f"{self._done}/{self.budget} trials")
        best = info.get("best") or {}
        if best:
            table.add_row("best so far", "  ".join(f"{k} {v:.4g}" for k, v in best.items()))
        baseline = info.get("baseline") or {}
        if baseline:  # what a person would have set by hand, on the same split
            table.add_row("best baseline",
                          "  ".join(f"{k} {v:.4g}" for k, v in baseline.items()))
        if info.get("front"):
            hv = info.get("hypervolume")
            table.add_row("Pareto front", f"{info['front']} trial(s)" + (
                f", hypervolume {hv:.4g}" if hv is not None else ""))
        for i, state in enumerate(info.get("workers") or []):
            table.add_row("workers" if i == 0 else "", state)
        table.add_row("", "Ctrl-C stops; the run resumes with `evomerge resume`")
        return table

    def close(self) -> None:
        """The last state, then a newline on a terminal (the next output starts clean)."""
        if self.mode == "quiet" or not hasattr(self, "_t0"):
            return
        # the final count, unless the last line already showed it
        if self._done != self._emitted or self.mode == "tty":
            self._emit(time.monotonic())
        if self.mode == "tty" and self._live is not None:
            self._live.stop()
            self._live = None
            if not self.stream.isatty():
                self.stream.write("\n")
                self.stream.flush()
