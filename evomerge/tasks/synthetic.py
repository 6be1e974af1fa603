"""A synthetic task for measuring the search machinery itself (schedulers, executors,
checkpoints) without models: genomes in the unit box, a smooth score with per-sample scores,
and an evaluation that takes a heavy-tailed time (log-normal, drawn from the genome so a
replay takes the same time). Real evaluations differ in cost by candidate and by worker; this
reproduces that, cheaply and exactly, on any number of Ray workers."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from evomerge.search.protocol import ControllerSetup
from evomerge.tasks.base import SimulatedWorker, Task, TaskWorker


def lognormal_seconds(key: bytes, median: float, tail: float) -> float:
    """A log-normal time (this median, sigma `tail`) drawn from a hash of `key`: the same
    key always takes the same time, so a replay takes what the run took."""
    digest = hashlib.blake2b(key, digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return float(median * np.exp(tail * rng.standard_normal()))


class SyntheticWorker(SimulatedWorker):
    """Sleeps the genome's drawn time (or, simulated, only reports it), then scores it
    against a fixed target."""

    def __init__(self, spec: Any, sleep: bool = True):
        self.spec = spec
        self.sleep = sleep
        self.target = np.linspace(0.2, 0.8, spec.dimension)

    def drawn_seconds(self, genome: np.ndarray) -> float:
        """The full evaluation time drawn from the genome (the same on every replay)."""
        return lognormal_seconds(np.ascontiguousarray(genome).tobytes(),
                                 self.spec.median_seconds, self.spec.tail)

    def _genes(self, fraction: float) -> int:
        return max(1, int(np.ceil(fraction * self.spec.dimension)))

    def seconds(self, payload: Any, split: str, fraction: float = 1.0) -> float:
        """A fraction of the genes takes that fraction of the time."""
        return self.drawn_seconds(payload) * self._genes(fraction) / self.spec.dimension

    def evaluate(self, payload: Any, split: str, fraction: float = 1.0):
        """The score on the leading genes (after the drawn time, unless simulated)."""
        if self.sleep:
            time.sleep(self.seconds(payload, split, fraction))
        k = self._genes(fraction)
        per_gene = np.clip(1.0 - 4.0 * (np.asarray(payload) - self.target) ** 2, 0.0, 1.0)[:k]
        return {"score": float(per_gene.mean())}, per_gene, {}


class SyntheticTask(Task):
    """Genomes in the unit box, a smooth score with per-sample scores, a heavy-tailed cost."""

    def __init__(self, cfg: Any, origin: str = "<config>", prepare: bool = True):
        self.cfg = cfg
        self.spec = cfg.task
        self.objectives, self.reference_point = self.objectives_of(cfg)

    @staticmethod
    def objectives_of(cfg: Any) -> tuple[list[tuple[str, str]], dict[str, float]]:
        """One score, maximised, from 0."""
        return [("score", "maximize")], {"score": 0.0}

    def controller_setup(self, controller_kind: str, population: int) -> ControllerSetup:
        """The unit box from its centre; M2N2 gets a full archive of random points, others one."""
        d = self.spec.dimension
        rng = np.random.default_rng(self.cfg.seed)
        n = population  # M2N2: its archive; the others: one
        initial = [rng.uniform(0, 1, d) for _ in range(n)]
        return ControllerSetup(np.full(d, 0.5), np.zeros(d), np.ones(d), initial=initial)

    def decode(self, genome: np.ndarray) -> np.ndarray:
        """The genome clipped to the unit box, which is what the worker scores."""
        return np.clip(genome, 0.0, 1.0)

    def worker(self) -> TaskWorker:
        """A new synthetic worker per call; it holds only the spec and its target."""
        return SyntheticWorker(self.spec)

    def simulated_worker(self) -> SimulatedWorker:
        """The same worker without the sleep: the simulated executor keeps the time."""
        return SyntheticWorker(self.spec, sleep=False)
