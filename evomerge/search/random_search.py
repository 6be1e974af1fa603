"""Random search: uniform in the box (or Gaussian around x0 when unbounded). The baseline every
other controller has to beat."""

from __future__ import annotations

from typing import Any

import numpy as np

from evomerge.search.protocol import Candidate, Controller, Result


class RandomSearch(Controller):
    name = "random"

    def __init__(self, x0: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None,
                 sigma: float = 0.1, batch: int = 1, seed: int = 0):
        self.x0 = np.asarray(x0, dtype=np.float64)
        self.lower, self.upper, self.sigma, self.batch = lower, upper, sigma, batch
        self.rng = np.random.default_rng(seed)
        self.next_id = 0
        self.best_f, self.best_x = -np.inf, None

    def ask(self) -> list[Candidate]:
        out = []
        for _ in range(self.batch):
            if self.lower is not None and self.upper is not None:
                x = self.rng.uniform(self.lower, self.upper)
            else:
                x = self.x0 + self.sigma * self.rng.standard_normal(self.x0.shape)
            out.append(Candidate(self.next_id, x))
            self.next_id += 1
        return out

    def tell(self, results: list[tuple[Candidate, Result]]) -> None:
        for cand, res in results:
            if res.status == "ok" and res.fitness > self.best_f:
                self.best_f, self.best_x = res.fitness, cand.genome

    def best_genome(self) -> np.ndarray | None:
        return self.best_x

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "next_id": self.next_id,
                "best_f": self.best_f, "best_x": self.best_x}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.next_id, self.best_f, self.best_x = state["next_id"], state["best_f"], state["best_x"]
