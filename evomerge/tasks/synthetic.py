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

from evomerge.tasks.base import ControllerSetup, Task, TaskWorker, task_objectives


class SyntheticWorker(TaskWorker):
    def __init__(self, spec: Any):
        self.spec = spec
        self.target = np.linspace(0.2, 0.8, spec.dimension)

    def seconds(self, genome: np.ndarray) -> float:
        digest = hashlib.blake2b(np.ascontiguousarray(genome).tobytes(), digest_size=8)
        rng = np.random.default_rng(int.from_bytes(digest.digest(), "little"))
        return float(self.spec.median_seconds * np.exp(self.spec.tail * rng.standard_normal()))

    def evaluate(self, payload: Any, split: str, fraction: float = 1.0):
        """A fraction of the genes scores at that fraction of the time."""
        k = max(1, int(np.ceil(fraction * self.spec.dimension)))
        time.sleep(self.seconds(payload) * k / self.spec.dimension)
        per_gene = np.clip(1.0 - 4.0 * (np.asarray(payload) - self.target) ** 2, 0.0, 1.0)[:k]
        return {"score": float(per_gene.mean())}, per_gene, {}


class SyntheticTask(Task):
    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.spec = cfg.task
        self.objectives, self.reference_point = task_objectives(cfg)

    def controller_setup(self, controller_kind: str, archive_size: int) -> ControllerSetup:
        d = self.spec.dimension
        rng = np.random.default_rng(self.cfg.seed)
        n = archive_size if controller_kind == "m2n2" else 1
        initial = [rng.uniform(0, 1, d) for _ in range(n)]
        return ControllerSetup(np.full(d, 0.5), np.zeros(d), np.ones(d), initial=initial)

    def decode(self, genome: np.ndarray) -> np.ndarray:
        return np.clip(genome, 0.0, 1.0)

    def worker(self) -> TaskWorker:
        return SyntheticWorker(self.spec)
