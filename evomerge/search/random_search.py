"""Random search: uniform in the box (or Gaussian around x0 when unbounded). The baseline every
other controller has to beat."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from evomerge.search.protocol import (
    Candidate,
    Controller,
    ControllerSetup,
    ControllerSpec,
    Result,
    SearchContext,
)


class RandomSearch(Controller):
    """Independent draws: uniform in the box, or N(x0, sigma²) without one."""

    name = "random"

    def __init__(self, x0: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None,
                 sigma: float = 0.1, batch: int = 1, seed: int = 0):
        self.x0 = np.asarray(x0, dtype=np.float64)
        self.lower, self.upper, self.sigma, self.batch = lower, upper, sigma, batch
        self.rng = np.random.default_rng(seed)
        self.next_id = 0
        self.best_f, self.best_x = -np.inf, None

    def ask(self) -> list[Candidate]:
        """A batch of independent draws: uniform in the box, else Gaussian around x0."""
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
        """Only track the best: later draws do not depend on results."""
        for cand, res in results:
            if res.status == "ok" and res.fitness > self.best_f:
                self.best_f, self.best_x = res.fitness, cand.genome

    def best_genome(self) -> np.ndarray | None:
        """The genome with the highest fitness told so far."""
        return self.best_x

    def state_dict(self) -> dict[str, Any]:
        """The RNG state, next id and best so far: all a resume needs to draw the same sequence."""
        return {"rng": self.rng.bit_generator.state, "next_id": self.next_id,
                "best_f": self.best_f, "best_x": self.best_x}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the RNG, next id and best so far from state_dict."""
        self.rng.bit_generator.state = state["rng"]
        self.next_id, self.best_f, self.best_x = state["next_id"], state["best_f"], state["best_x"]


class RandomSpec(ControllerSpec):
    """`controller: {kind: random}`: `sigma` is the spread around x0 when the space is
    unbounded."""

    kind: Literal["random"]
    sigma: float = Field(0.1, gt=0)

    def build(self, setup: ControllerSetup, ctx: SearchContext) -> RandomSearch:
        """Random search in the task's box."""
        x0 = np.asarray(setup.x0, dtype=np.float64)
        return RandomSearch(x0, setup.lower, setup.upper, sigma=self.sigma, seed=ctx.seed)
