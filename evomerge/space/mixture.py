"""Seed-mixture space (docs/design.md §5, M2N2 for large models): a genome is a per-layer-group
coefficient vector over the K seed models, θ_g = Σ_k c[g, k]·θ_{k,g}.

Genes are group-major (``g{g}.src{k}``), the layout M2N2's `SeedMixtures` individuals expect,
so SLERP of two members is again a mixture and the split point moves over layer groups. A
genome decodes to a `linear` recipe (no normalisation) with per-group weights, which the merge
engine builds like any other recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.recipe import Recipe
from evomerge.space.base import Space


class SeedMixtureSpace(Space):
    """Genomes that mix K seed models per layer group, decoded to linear merge recipes."""
    def __init__(self, sources: Sequence[str], groups: int = 1,
                 coefficient_range: tuple[float, float] = (0.0, 1.0), dtype: str | None = None):
        if len(sources) < 2:
            raise ValueError("sources: a seed mixture needs at least two seed models")
        if groups < 1:
            raise ValueError(f"groups: need at least 1, got {groups}")
        lo, hi = coefficient_range
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"coefficient_range: need finite lo < hi, got {coefficient_range}")
        self.sources, self.groups, self.dtype = list(sources), int(groups), dtype
        self.k = len(self.sources)
        self.range = (float(lo), float(hi))

    @property
    def dim(self) -> int:
        """One coefficient per layer group and seed."""
        return self.groups * self.k

    @property
    def lower(self) -> np.ndarray:
        """The low end of `coefficient_range` for every gene."""
        return np.full(self.dim, self.range[0])

    @property
    def upper(self) -> np.ndarray:
        """The top of `coefficient_range` for every gene."""
        return np.full(self.dim, self.range[1])

    def initial(self) -> np.ndarray:
        """The uniform mixture (x0 for CMA-ES and random search)."""
        return np.full(self.dim, 1.0 / self.k)

    def seeds(self) -> list[np.ndarray]:
        """Each seed model alone: M2N2's initial archive when merging pre-trained models."""
        return [np.tile(np.eye(self.k)[i], self.groups) for i in range(self.k)]

    def describe(self) -> list[str]:
        """Gene names in genome order (`g{group}.src{seed}`)."""
        return [f"g{g}.src{k}" for g in range(self.groups) for k in range(self.k)]

    def decode(self, genome: np.ndarray) -> Recipe:
        """A linear, unnormalised recipe with the genome's per-group weights, unclipped."""
        # No clipping: SLERP children of in-range members may step slightly outside the box,
        # and clipping would build a different model than the one M2N2 reasons about.
        x = np.asarray(genome, dtype=np.float64).reshape(-1)
        if x.size != self.dim:
            raise ValueError(f"genome: expected {self.dim} genes, got {x.size}")
        if not np.all(np.isfinite(x)):
            raise ValueError("genome: contains non-finite values")
        c = x.reshape(self.groups, self.k)
        sources: list[dict[str, Any]] = []
        for k, ref in enumerate(self.sources):
            w = [float(v) for v in c[:, k]]
            sources.append({"model": ref,
                            "parameters": {"weight": w[0] if self.groups == 1 else
                                           {"groups": w}}})
        data: dict[str, Any] = {"method": "linear", "sources": sources,
                                "parameters": {"normalize": False}}
        if self.dtype:
            data["dtype"] = self.dtype
        return Recipe.from_dict(data, "<seed-mixture genome>")
