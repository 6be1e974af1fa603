"""Per-source data that every candidate's TIES / DARE selection can reuse.

Within one search the sources and base never change, so |τ_k| of each tensor never changes:
each entry's magnitude rank, computed once, gives any candidate's exact top-k mask as
`rank < k`, where the merge would otherwise run two histogram passes over τ_k and resolve
the ties at the threshold. Likewise a DARE recipe's
draws depend only on (seed, tensor, source), and a search space fixes the seed, so the draws
are made once and only compared against each candidate's density. Both cost 4 bytes per
entry per source, so the cache holds at most `budget` bytes and past it the merge simply
computes what it needs, as `evomerge merge` does: the results are bit-identical either way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from evomerge.kernels import float32 as methods


class SelectionCache:
    """Magnitude ranks and DARE draws per (tensor, source), within a byte budget: what every
    candidate of a search would otherwise recompute from the same sources."""

    def __init__(self, budget: int) -> None:
        self.budget = max(0, int(budget))
        self.used = 0
        self._lock = threading.Lock()
        self._ranks: dict[tuple[str, int], torch.Tensor] = {}
        self._draws: dict[tuple[str, int], tuple[int | None, torch.Tensor]] = {}
        self.refused = 0  # entries that did not fit (their merges ran uncached)

    def _reserve(self, nbytes: int, freed: int = 0) -> bool:
        with self._lock:
            if self.used - freed + nbytes > self.budget:
                self.refused += 1
                return False
            self.used += nbytes - freed
            return True

    def ranks(self, name: str, k: int, base: torch.Tensor, source: torch.Tensor
                    ) -> torch.Tensor | None:
        """The magnitude ranks of source k's task vector at tensor `name`."""
        key = (name, k)
        hit = self._ranks.get(key)
        if hit is None and self._reserve(4 * base.numel()):
            hit = self._ranks[key] = methods.magnitude_ranks(
                source.reshape(-1).float() - base.reshape(-1).float())
        return hit

    def uniforms(self, name: str, k: int, seed: int | None, n: int,
                 generator: Callable[[], torch.Generator], device: torch.device
                 ) -> torch.Tensor | None:
        """DARE's draws for tensor `name`, source k, under `seed` (a new seed replaces them)."""
        key = (name, k)
        hit = self._draws.get(key)
        if hit is not None and hit[0] == seed:
            return hit[1]
        if not self._reserve(4 * n, freed=4 * n if hit is not None else 0):
            return None
        draws = methods.dare_uniforms(n, generator(), device)
        self._draws[key] = (seed, draws)
        return draws
