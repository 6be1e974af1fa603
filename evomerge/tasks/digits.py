"""The digits task (docs/design.md §8): flat MLP parameter vectors scored by a numpy evaluator."""

from __future__ import annotations

from typing import Any

import numpy as np

from evomerge.evaluate import digits
from evomerge.search.protocol import ControllerSetup
from evomerge.space.base import genome_digest
from evomerge.tasks.base import Task, TaskWorker

_GENOME_INLINE_MAX = 256  # longer genomes are logged as a digest (the checkpoint holds bests)


class DigitsWorker(TaskWorker):
    """Scores a flat parameter vector with the numpy digits evaluator."""

    def __init__(self, evaluator: Any):
        self.ev = evaluator

    def evaluate(self, payload: Any, split: str, fraction: float = 1.0):
        """Search split: accuracy and per-sample scores; held-out split: accuracy only."""
        if split == "heldout":
            return self.ev.heldout(payload), None, {}
        objectives, scores = self.ev.evaluate(payload, fraction)
        return objectives, scores, {}


class DigitsTask(Task):
    """Flat MLP weights as genomes, scored by accuracy on held-apart digits (docs/design.md §8)."""

    def __init__(self, cfg: Any, origin: str = "<config>", prepare: bool = True):
        self.cfg = cfg
        self.objectives, self.reference_point = self.objectives_of(cfg)
        self.evaluator = digits.DigitsEvaluator(scores=cfg.task.scores)
        t = cfg.task
        if t.init == "pretrained":
            data = self.evaluator.data
            self.initial = [
                digits.train_expert(data, range(0, 5), cfg.seed * 2 + 1, t.expert_steps,
                                    t.expert_lr),
                digits.train_expert(data, range(5, 10), cfg.seed * 2 + 2, t.expert_steps,
                                    t.expert_lr)]
        else:
            rng = np.random.default_rng(cfg.seed)
            n = t.init_members or cfg.controller.population
            self.initial = [digits.init_params(rng, t.init_sigma) for _ in range(n)]
        self._worker = DigitsWorker(self.evaluator)

    @staticmethod
    def objectives_of(cfg: Any) -> tuple[list[tuple[str, str]], dict[str, float]]:
        """Accuracy, maximised, from 0."""
        return [("accuracy", "maximize")], {"accuracy": 0.0}

    def controller_setup(self, controller_kind: str, population: int) -> ControllerSetup:
        """Start from the first initial member, unbounded; all initial members seed the archive."""
        return ControllerSetup(np.asarray(self.initial[0], dtype=np.float64),
                               initial=self.initial)

    def decode(self, genome: np.ndarray) -> np.ndarray:
        """The genome itself: it already is the MLP's parameter vector."""
        return genome

    def log_fields(self, genome: np.ndarray, payload: Any) -> dict[str, Any]:
        """The genome if short; else only its digest (the checkpoint holds the best genomes)."""
        if genome.size <= _GENOME_INLINE_MAX:
            return {"genome": [float(v) for v in genome]}
        return {"genome_digest": genome_digest(genome)}

    def worker(self) -> TaskWorker:
        """The worker built with the task (around its evaluator), reused for every call."""
        return self._worker
