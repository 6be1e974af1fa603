"""The digits task (docs/design.md §8): flat MLP parameter vectors scored by a numpy evaluator."""

from __future__ import annotations

from typing import Any

import numpy as np

from evomerge.tasks.base import ControllerSetup, Task, TaskWorker, task_objectives

_GENOME_INLINE_MAX = 256  # longer genomes are logged as a digest (the checkpoint holds bests)


class DigitsWorker(TaskWorker):
    def __init__(self, evaluator: Any):
        self.ev = evaluator

    def evaluate(self, payload: Any, split: str, fraction: float = 1.0):
        if split == "heldout":
            return self.ev.heldout(payload), None, {}
        objectives, scores = self.ev.evaluate(payload, fraction)
        return objectives, scores, {}


class DigitsTask(Task):
    def __init__(self, cfg: Any):
        from evomerge.evaluate import digits

        self.cfg = cfg
        self.objectives, self.reference_point = task_objectives(cfg)
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
            n = t.init_members or (
                cfg.controller.archive_size if cfg.controller.kind == "m2n2" else 1)
            self.initial = [digits.init_params(rng, t.init_sigma) for _ in range(n)]
        self._worker = DigitsWorker(self.evaluator)

    def controller_setup(self, controller_kind: str, archive_size: int) -> ControllerSetup:
        return ControllerSetup(np.asarray(self.initial[0], dtype=np.float64),
                               initial=self.initial)

    def decode(self, genome: np.ndarray) -> np.ndarray:
        return genome

    def log_fields(self, genome: np.ndarray, payload: Any) -> dict[str, Any]:
        if genome.size <= _GENOME_INLINE_MAX:
            return {"genome": [float(v) for v in genome]}
        from evomerge.run import genome_digest

        return {"genome_digest": genome_digest(genome)}

    def worker(self) -> TaskWorker:
        return self._worker
