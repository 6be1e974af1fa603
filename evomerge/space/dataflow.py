"""Data-flow space (DFS, docs/design.md §4): which layers run, in which order, with which
input scale.

Layers are numbered globally: model 0 ("A") first, then model 1, ...; M = total layers. The
slot sequence is that numbering repeated r times (T = M·r slots; slot i holds global layer
i mod M). Genome layout:

* ``I`` — T indicator genes in [-1, 1]; slot i is used iff I_i > 0; used slots run in slot
  order.
* scales, by `scale_mode` (default "pair", the paper's parameterisation):
  ``"none"`` — no genes, every hop scale 1.0;
  ``"slot"`` — T genes, the scale of the hop coming from slot i;
  ``"pair"`` — M·M genes, row-major W[i, j] (index T + i·M + j), the scale of a hop into
  global layer j coming from global layer i (the paper's W).
  Scale genes lie in `scale_range` (default [0.05, 2]); they start at 1.0.

Start/end constraint (model A supplies embeddings, final norm and head): if the first used hop
is not (0, 0) the hop (0, 0) is prepended; if the last is not (0, L_A − 1) the hop
(0, L_A − 1) is appended (no slots used: [(0, 0), (0, L_A − 1)]). Added hops own no gene and
take scale 1.0 in "slot" mode. In "pair" mode the first hop of a route has no predecessor and
takes 1.0; every later hop takes W[previous, this], added ones included.

Initialisation (docs/design.md §4): A's slots in the first repetition at +2σ, all other indicator
genes at −2σ, so the initial route is A itself with all scales 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from evomerge.recipe import Recipe, RouteHop
from evomerge.space.base import Space

ScaleMode = Literal["none", "slot", "pair"]


class DataFlowSpace(Space):
    """Genome ↔ layer-route Recipe (method passthrough over the sources)."""

    def __init__(
        self,
        models: Sequence[tuple[str, int]],
        repeats: int = 3,
        scale_mode: ScaleMode = "pair",
        sigma: float = 1 / 6,
        indicator_range: tuple[float, float] = (-1.0, 1.0),
        scale_range: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        if not models:
            raise ValueError("models: need at least one (ref, num_layers) pair")
        if any(n < 1 for _, n in models):
            raise ValueError(f"models: every model needs at least one layer, got {list(models)}")
        if repeats < 1:
            raise ValueError(f"repeats: need at least 1, got {repeats}")
        if scale_mode not in ("none", "slot", "pair"):
            raise ValueError(f"scale_mode: expected none, slot or pair, got {scale_mode!r}")
        lo_i, hi_i = indicator_range
        if not (lo_i < 0 < hi_i and lo_i <= -2 * sigma and 2 * sigma <= hi_i and sigma > 0):
            raise ValueError(
                f"indicator_range {indicator_range} must hold ±2σ (σ = {sigma}) around 0"
            )
        if not (0 < scale_range[0] <= 1.0 <= scale_range[1]):
            raise ValueError(f"scale_range {scale_range} must be above 0 (a zero scale erases "
                             "the stream and cannot be folded) and contain the initial 1.0")
        self.refs = [ref for ref, _ in models]
        self.layers = [int(n) for _, n in models]
        self.offsets = np.cumsum([0, *self.layers[:-1]]).tolist()
        self.M = sum(self.layers)
        self.repeats = repeats
        self.T = self.M * repeats
        self.scale_mode: ScaleMode = scale_mode
        self.sigma = sigma
        self.indicator_range = indicator_range
        self.scale_range = scale_range
        # global layer index -> (source, layer)
        self._where = [(s, i) for s, n in enumerate(self.layers) for i in range(n)]

    # --- Space ------------------------------------------------------------------------------
    @property
    def n_scales(self) -> int:
        """Scale genes after the indicators: none, one per slot, or one per layer pair."""
        return {"none": 0, "slot": self.T, "pair": self.M * self.M}[self.scale_mode]

    @property
    def dim(self) -> int:
        """One indicator gene per slot, plus the scale genes."""
        return self.T + self.n_scales

    @property
    def lower(self) -> np.ndarray:
        """Indicators from the low end of `indicator_range`; scales from that of `scale_range`."""
        return np.concatenate(
            [np.full(self.T, self.indicator_range[0]), np.full(self.n_scales, self.scale_range[0])]
        )

    @property
    def upper(self) -> np.ndarray:
        """Indicators up to the top of `indicator_range`; scales up to that of `scale_range`."""
        return np.concatenate(
            [np.full(self.T, self.indicator_range[1]), np.full(self.n_scales, self.scale_range[1])]
        )

    def initial(self) -> np.ndarray:
        """A's first-repetition slots on (+2σ), the rest off (−2σ); scales 1.0."""
        ind = np.full(self.T, -2 * self.sigma)
        ind[: self.layers[0]] = 2 * self.sigma
        return np.concatenate([ind, np.ones(self.n_scales)])

    def decode(self, genome: np.ndarray) -> Recipe:
        """A passthrough recipe that runs the genome's route through the sources' layers."""
        return Recipe(
            method="passthrough",
            sources=[{"model": ref} for ref in self.refs],
            route=self.route(genome),
        )

    # --- helpers ----------------------------------------------------------------------------
    def route(self, genome: np.ndarray) -> list[RouteHop]:
        """The hops a genome encodes, constraint and scales applied (see module docstring)."""
        x = self._check(genome)
        ind, scales = x[: self.T], x[self.T :]
        used = [int(i) for i in np.flatnonzero(ind > 0)]
        # (global layer, slot or None for an added hop)
        hops: list[tuple[int, int | None]] = [(i % self.M, i) for i in used]
        last_a = self.layers[0] - 1
        if not hops or hops[0][0] != 0:
            hops.insert(0, (0, None))
        if hops[-1][0] != last_a:
            hops.append((last_a, None))
        out = []
        for k, (g, slot) in enumerate(hops):
            if self.scale_mode == "slot" and slot is not None:
                scale = float(scales[slot])
            elif self.scale_mode == "pair" and k > 0:
                scale = float(scales[hops[k - 1][0] * self.M + g])
            else:
                scale = 1.0
            src, layer = self._where[g]
            out.append(RouteHop(source=src, layer=layer, scale=scale))
        return out

    def describe(self) -> list[str]:
        """Gene names in genome order: I.r{rep}.s{source}.l{layer}, then scale genes."""
        names = [
            f"I.r{i // self.M}.s{self._where[i % self.M][0]}.l{self._where[i % self.M][1]}"
            for i in range(self.T)
        ]
        if self.scale_mode == "slot":
            names += [f"scale.{n[2:]}" for n in names]
        elif self.scale_mode == "pair":
            names += [f"W[{i},{j}]" for i in range(self.M) for j in range(self.M)]
        return names

