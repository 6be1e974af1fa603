"""The anchor-point rung (docs/design.md §7.4): which few items of the search split stand for
the whole, learned from the run's own full evaluations.

Every full-fidelity search evaluation logs the objectives' per-item scores (`score_parts`
says which metric each block is). Once `min_full` of them are in, and again after every
`refit_every` more, the items of each metric are clustered by how those candidates scored on
them (`item_response.anchor_points`); a new candidate is scored on the anchors alone and its
metrics estimated as their weighted means. The fit is a function of the full rows in trial
order and nothing else (a fixed k-means seed), so a resumed run that reads its log holds the
same anchors as the run it continues had at that trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from evomerge.item_response import anchor_points
from evomerge.run.errors import RunError
from evomerge.tasks.base import AnchorItems


@dataclass
class AnchorFit:
    """One fit: the items to score per `evaluator:metric`, and which share of the search
    split's items they are (the rung's fidelity)."""

    items: AnchorItems
    fraction: float
    rows: int  # the full evaluations it was learned from


class AnchorRung:
    """Collects full rows and refits the anchors on schedule."""

    def __init__(self, spec: Any, seed: int, where: str = "fidelity.anchors"):
        self.k, self.min_full, self.refit_every = spec.items, spec.min_full, spec.refit_every
        self.seed = seed
        self.where = where
        self.rows: list[np.ndarray] = []
        self.parts: list[tuple[str, int]] | None = None
        self.fit: AnchorFit | None = None

    def note_full(self, scores: np.ndarray | None, parts: Any, trial: int) -> None:
        """A successful full-fidelity search evaluation (live or logged, in trial order)."""
        if scores is None or not parts:
            return
        layout = [(str(name), int(n)) for name, n in parts]
        if self.parts is None:
            self.parts = layout
        elif layout != self.parts:
            raise RunError(f"trial {trial}: its per-item scores are laid out as {layout}, "
                           f"earlier trials' as {self.parts}; the anchors cannot be learned")
        self.rows.append(np.asarray(scores, dtype=np.float32))
        n = len(self.rows)
        if n >= self.min_full and (n - self.min_full) % self.refit_every == 0:
            self.fit = self._fit()

    def _fit(self) -> AnchorFit:
        assert self.parts is not None
        y = np.stack(self.rows).astype(np.float64)
        total = sum(n for _, n in self.parts)
        if all(self.k >= n for _, n in self.parts):
            raise RunError(f"{self.where}.items: {self.k} anchors per metric, but the metrics "
                           f"have only {[n for _, n in self.parts]} items; scoring every "
                           "candidate in full is cheaper (drop the fidelity block)")
        items: AnchorItems = {}
        at = 0
        for name, n in self.parts:
            positions, weights = anchor_points(y[:, at: at + n], self.k, self.seed)
            items[name] = ([int(p) for p in positions], [float(w) for w in weights])
            at += n
        chosen = sum(len(p) for p, _ in items.values())
        return AnchorFit(items, chosen / total, len(self.rows))


__all__ = ["AnchorFit", "AnchorRung"]
