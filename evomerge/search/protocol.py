"""The ask/tell protocol every controller speaks.

The controller never sees tensors: it proposes genomes (vectors), and is told objectives and
per-sample scores. Its whole state round-trips through `state_dict()`, which the run loop
checkpoints atomically; after `load_state_dict`, asking again proposes exactly what it proposed
before the checkpoint, which is what makes resume replay deterministic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

# Genomes longer than this make full-covariance CMA-ES and Optuna's samplers unsafe defaults:
# CMA-ES keeps n x n matrices (at the digits task's 19,210 genes a 5.9 GB checkpoint and more
# memory than this machine has); Optuna's study keeps every trial's n parameters.
HIGH_DIMENSION = 1000


@dataclass
class ControllerSetup:
    """What a controller needs from the task: the start, the box, the initial members and,
    for M2N2, how its individuals cross over."""

    x0: np.ndarray
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    initial: list[np.ndarray] = field(default_factory=list)
    individuals: Any = None  # M2N2: FlatIndividuals (None) or SeedMixtures
    # scored hand-set points to start from, best first (the run's baselines): x0 is the
    # first; M2N2 puts them first in its archive, Optuna asks them first
    starts: list[np.ndarray] = field(default_factory=list)
    # the Results the starts were scored with (same order): a controller that can take a
    # scored point in without asking for it (M2N2's archive) spends no trial on it
    start_results: list[Result] = field(default_factory=list)

    def initial_with_starts(self) -> list[np.ndarray]:
        """`starts`, then the initial members that are not among them (as many as the
        larger of the two lists)."""
        rest = [g for g in self.initial if not any(np.array_equal(g, h) for h in self.starts)]
        return [*self.starts, *rest][: max(len(self.initial), len(self.starts))]



@dataclass
class Candidate:
    """One proposal: an id unique within the run and a genome."""

    id: int
    genome: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """What an evaluation returns. `fitness` is the scalar the controller maximises (the
    primary objective, sign-adjusted by the loop); `scores` are per-sample scores on the search
    split in [0, 1] (M2N2 needs them)."""

    candidate_id: int
    fitness: float
    objectives: dict[str, float] = field(default_factory=dict)
    scores: np.ndarray | None = None
    status: str = "ok"  # "ok" or "failed"
    heldout: dict[str, float] | None = None  # objectives on the test split
    seconds: float = 0.0
    error: str | None = None
    fidelity: float = 1.0  # the share of the search split it was scored on
    validation: dict[str, float] | None = None  # objectives on the validation split


class Controller(ABC):
    """ask() → candidates; tell(candidate, result) pairs; state round-trips for resume."""

    name: str = "controller"
    # False when `state_dict` taken between ask and tell rolls back to before the ask (so a
    # resume proposes those candidates again); True when asked candidates are gone from the
    # state and the run loop must keep them itself (steady-state controllers)
    outstanding_resumes: bool = True

    def at_boundary(self) -> bool:
        """Whether `state_dict` now is the state after every tell so far (CMA-ES: not while
        a generation, even one cut short by the budget, is incomplete)."""
        return True

    @abstractmethod
    def ask(self) -> list[Candidate]:
        """Next candidates to evaluate (a generation, or one child for steady-state)."""

    @abstractmethod
    def tell(self, results: list[tuple[Candidate, Result]]) -> None:
        """Results for candidates previously asked, in any order."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; picklable."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` so a resumed run continues exactly where it stopped."""

    def best_genome(self) -> np.ndarray | None:
        """The genome the controller currently believes best (for reports)."""
        return None


@dataclass
class SearchContext:
    """What a controller is built with besides its own settings and the task's setup."""

    budget: int
    seed: int
    objectives: list[tuple[str, str]]
    origin: str = "<config>"  # the config file errors name
    run_dir: Path | None = None  # where a controller keeps files of its own (None: memory)
    workers: int = 1  # evaluation slots the run fills (asynchronous controllers use it)


class ControllerSpec(BaseModel):
    """A controller's settings as a config's `controller:` block gives them. Each controller
    module declares one subclass (with `kind: Literal[...]`) beside the controller, and
    `evomerge.search.registry` lists them; `build` makes the controller, after refusing or
    adapting what would be unsafe at the genome's size (docs/design.md §5)."""

    model_config = ConfigDict(extra="forbid")

    kind: str

    @property
    def population(self) -> int:
        """How many initial members the task should hand this controller."""
        return 1

    def build(self, setup: ControllerSetup, ctx: SearchContext) -> Controller:
        """The controller, ready to ask."""
        raise NotImplementedError
