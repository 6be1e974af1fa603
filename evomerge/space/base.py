"""What a search space is: a box of genomes and a decoder from genome to what gets evaluated."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Space(ABC):
    """A genome space. Controllers see only `dim`, the bounds and `initial()`; the executor
    sees only `decode()`."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of a genome, which sizes what the controllers propose."""

    @property
    def lower(self) -> np.ndarray | None:
        """Lower bounds, or None when unbounded."""
        return None

    @property
    def upper(self) -> np.ndarray | None:
        """Upper bounds, or None when unbounded."""
        return None

    @abstractmethod
    def initial(self) -> np.ndarray:
        """The starting genome (x0 for CMA-ES)."""

    @abstractmethod
    def decode(self, genome: np.ndarray) -> Any:
        """A Recipe (PS/DFS spaces) or raw parameters (flat space)."""

    def _check(self, genome: np.ndarray) -> np.ndarray:
        """The genome as a finite float64 vector of the right length, clipped to the box."""
        x = np.asarray(genome, dtype=np.float64).reshape(-1)
        if x.size != self.dim:
            raise ValueError(f"genome: expected {self.dim} genes, got {x.size}")
        if not np.all(np.isfinite(x)):
            raise ValueError("genome: contains non-finite values")
        if self.lower is not None and self.upper is not None:
            x = np.clip(x, self.lower, self.upper)
        return x


def genome_digest(genome: np.ndarray) -> str:
    """A short digest of a genome's exact float64 bytes: what the trial log keeps of a genome
    too long to log whole, enough to check a replay proposes the same one."""
    return hashlib.blake2b(np.ascontiguousarray(genome).tobytes(), digest_size=8).hexdigest()
