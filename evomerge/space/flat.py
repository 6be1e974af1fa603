"""Flat space: a small model's raw parameters as the genome, for from-scratch evolution
(docs/design.md §5, M2N2 / CMA-ES on digits). Decoding is the identity; the evaluator unflattens."""

from __future__ import annotations

import numpy as np

from evomerge.space.base import Space


class FlatSpace(Space):
    """R^n (optionally boxed); decode returns a float32 copy of the genome."""

    def __init__(
        self,
        dim: int,
        x0: np.ndarray | None = None,
        lower: float | np.ndarray | None = None,
        upper: float | np.ndarray | None = None,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim: need at least 1, got {dim}")
        self._dim = int(dim)
        self._x0 = np.zeros(dim) if x0 is None else np.asarray(x0, dtype=np.float64).reshape(-1)
        if self._x0.size != dim:
            raise ValueError(f"x0: expected {dim} values, got {self._x0.size}")
        self._lower = _box(lower, dim)
        self._upper = _box(upper, dim)
        if self._lower is not None and self._upper is not None:
            if np.any(self._lower > self._upper):
                raise ValueError("lower > upper somewhere")

    @property
    def dim(self) -> int:
        """Number of raw parameters in the genome."""
        return self._dim

    @property
    def lower(self) -> np.ndarray | None:
        """A copy of the lower bounds, or None when unbounded."""
        return None if self._lower is None else self._lower.copy()

    @property
    def upper(self) -> np.ndarray | None:
        """A copy of the upper bounds, or None when unbounded."""
        return None if self._upper is None else self._upper.copy()

    def initial(self) -> np.ndarray:
        """A copy of x0 (zeros unless given)."""
        return self._x0.copy()

    def decode(self, genome: np.ndarray) -> np.ndarray:
        """The genome as a float32 copy, which is the model's parameter vector."""
        x = np.asarray(genome).reshape(-1)
        if x.size != self._dim:
            raise ValueError(f"genome: expected {self._dim} genes, got {x.size}")
        return x.astype(np.float32, copy=True)


def _box(bound: float | np.ndarray | None, dim: int) -> np.ndarray | None:
    if bound is None:
        return None
    return np.broadcast_to(np.asarray(bound, dtype=np.float64), (dim,)).copy()
