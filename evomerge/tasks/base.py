"""The Task seam (docs/design.md §2): the driver side (space, objectives, controller setup,
decoding, the dedup key) and the worker side (`TaskWorker`: scores a decoded candidate on a split),
which an executor builds wherever candidates are evaluated."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.search.protocol import ControllerSetup

# the anchor-point rung's items (docs/design.md §7.4): `evaluator:metric` -> (positions in
# that metric's per-item scores on the search split, their weights summing to 1)
AnchorItems = dict[str, tuple[list[int], list[float]]]


class TaskWorker(ABC):
    """Evaluates decoded candidates; built once per worker (heavy state lives here)."""

    @abstractmethod
    def evaluate(self, payload: Any, split: str, fraction: float = 1.0
                 ) -> tuple[dict[str, float], np.ndarray | None, dict[str, Any]]:
        """(objectives, per-sample scores on the search split or None, extra log fields).
        `fraction` < 1: score on that leading share of the search split only (a cheaper,
        noisier estimate for multi-fidelity runs). Workers of tasks that `check_anchors`
        allows also take `items=AnchorItems`: score only those and return the objectives
        estimated from them (no per-sample scores)."""

    def close(self) -> None:
        """Release what the worker holds."""
        return None


class SimulatedWorker(TaskWorker):
    """A worker with a cost model: `evaluate` scores at once, and `seconds` says how long
    the real evaluation would have taken (the simulated executor's clock advances by it)."""

    @abstractmethod
    def seconds(self, payload: Any, split: str, fraction: float = 1.0) -> float:
        """The evaluation time this job would take on a real worker."""


@dataclass
class Baseline:
    """A hand-set candidate scored before the search (docs/design.md §7.5): `payload` is what
    a worker evaluates; `genome` its point in the run's space, or None when the space cannot
    express it (then it is a reference line only, never a starting point; `note` says why)."""

    name: str
    payload: Any
    genome: np.ndarray | None
    note: str = ""


class Task(ABC):
    """One kind of search (merge, digits, synthetic): what a genome means, what is scored and
    which way is better. Built by `evomerge.tasks.registry.build_task`."""

    objectives: list[tuple[str, str]]
    reference_point: dict[str, float]
    # whether its workers score a validation split (then the best trial is chosen on it)
    has_validation: bool = False

    def simulated_worker(self) -> SimulatedWorker:
        """A worker that does not spend the evaluation time but reports it (for the
        simulated executor); tasks without a cost model have none."""
        raise NotImplementedError(f"{type(self).__name__} has no cost model to simulate")

    def check_anchors(self, where: str) -> None:
        """Refuse the anchor-point fidelity unless every objective is built from metrics
        that are means of per-item scores this task's workers can score item by item."""
        raise ConfigError(f"{where}: a {type(self).__name__} cannot score chosen items; "
                          "use rungs (leading shares of the search split)")

    def baselines(self) -> list[Baseline]:
        """Hand-set candidates scored before the search, in order (none by default)."""
        return []

    @staticmethod
    @abstractmethod
    def objectives_of(cfg: Any) -> tuple[list[tuple[str, str]], dict[str, float]]:
        """A config's objectives (name, direction) and reference point, without building
        data or models (report and export read them this way)."""

    @abstractmethod
    def controller_setup(self, controller_kind: str, population: int) -> ControllerSetup:
        """The start, box and initial members the controller of this kind begins from."""

    @abstractmethod
    def decode(self, genome: np.ndarray) -> Any:
        """The candidate a worker evaluates (picklable data: a genome or a Recipe)."""

    def cache_key(self, payload: Any) -> str | None:
        """Equal keys mean equal candidates (evaluated once); None: no dedup."""
        return None

    def log_fields(self, genome: np.ndarray, payload: Any) -> dict[str, Any]:
        """What the trial log keeps of a candidate, enough to rebuild it from the config."""
        return {"genome": [float(v) for v in genome]}

    @abstractmethod
    def worker(self) -> TaskWorker:
        """The evaluating side, built where candidates are scored (once per worker)."""
