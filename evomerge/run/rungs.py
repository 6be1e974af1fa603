"""Multi-fidelity rungs (docs/design.md §7): asynchronous successive halving, in the shape of
Optuna's `SuccessiveHalvingPruner`. Every candidate is scored on the leading `rungs[0]` share
of the search split first; after each rung it goes on only if its primary objective is in the
best `promote` share of the last `window` results at that rung. With learned anchors
(`run/anchors.py`) the first rung is the anchor items, known once the anchors are first
fitted; until then every candidate is scored in full."""

from __future__ import annotations

from typing import Any


class SuccessiveHalving:
    """Decides, rung by rung, which candidates are worth a fuller (costlier) evaluation.
    Values are sign-adjusted so that larger is better. With one rung (no `fidelity` block)
    every candidate is scored in full at once."""

    def __init__(self, rungs: list[float], promote: float = 1.0, window: int | None = None,
                 anchored: bool = False):
        self.rungs = list(rungs)
        self.promote = promote
        self.window = window
        self.anchored = anchored
        self.values: dict[float, list[float]] = {}  # sign-adjusted primary, per rung

    @classmethod
    def from_config(cls, fidelity: Any) -> SuccessiveHalving:
        """The config's `fidelity` block, or a single full rung when it has none."""
        if fidelity is None:
            return cls([1.0])
        if fidelity.anchors is not None:
            return cls([1.0], fidelity.promote, fidelity.window, anchored=True)
        return cls(list(fidelity.rungs), fidelity.promote, fidelity.window)

    def anchor_at(self, fraction: float) -> None:
        """The anchors are fitted: they are the first rung, `fraction` of the items."""
        self.rungs = [fraction, 1.0]

    @property
    def first(self) -> float:
        """The fraction every candidate starts at."""
        return self.rungs[0]

    @property
    def multi(self) -> bool:
        """Whether there is more than one rung (trial lines then log their fidelity)."""
        return len(self.rungs) > 1 or self.anchored

    def next(self, fraction: float) -> float:
        """The rung after `fraction`."""
        return self.rungs[self.rungs.index(fraction) + 1]

    def promotes(self, fraction: float, value: float) -> bool:
        """Whether a result at this rung goes on to the next: in the best `promote` share of
        the last `window` results here (the first one always is). Counts the result."""
        seen = self.values.setdefault(fraction, [])
        window = self.window
        recent = seen[-(window - 1):] if window and window > 1 else \
            ([] if window == 1 else seen)
        better = sum(1 for v in recent if v > value)
        seen.append(value)
        return better < max(1, int((len(recent) + 1) * self.promote))

    def note_logged(self, line: dict[str, Any], primary: str, sign: float) -> None:
        """Rung statistics from a logged trial (on resume and replay): the rungs it passed
        count whatever became of it later."""
        for f, objectives in (line.get("rungs") or {}).items():
            self.values.setdefault(float(f), []).append(sign * objectives[primary])
        if line["status"] == "ok" and line.get("fidelity", 1.0) < 1:
            self.values.setdefault(line["fidelity"], []).append(
                sign * line["objectives"][primary])


__all__ = ["SuccessiveHalving"]
