"""The Task seam (docs/design.md §2): the driver side (space, objectives, controller setup,
decoding, the dedup key) and the worker side (`TaskWorker`: scores a decoded candidate on a split),
which an executor builds wherever candidates are evaluated."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evomerge.archive import Objective, ParetoArchive


@dataclass
class ControllerSetup:
    """What a controller needs from the task: the start, the box, the initial members and,
    for M2N2, how its individuals cross over."""

    x0: np.ndarray
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    initial: list[np.ndarray] = field(default_factory=list)
    individuals: Any = None  # M2N2: FlatIndividuals (None) or SeedMixtures


class TaskWorker(ABC):
    """Evaluates decoded candidates; built once per worker (heavy state lives here)."""

    @abstractmethod
    def evaluate(self, payload: Any, split: str, fraction: float = 1.0
                 ) -> tuple[dict[str, float], np.ndarray | None, dict[str, Any]]:
        """(objectives, per-sample scores on the search split or None, extra log fields).
        `fraction` < 1: score on that leading share of the search split only (a cheaper,
        noisier estimate for multi-fidelity runs)."""

    def close(self) -> None:
        """Release what the worker holds."""
        return None


class Task(ABC):
    objectives: list[tuple[str, str]]
    reference_point: dict[str, float]

    @abstractmethod
    def controller_setup(self, controller_kind: str, archive_size: int) -> ControllerSetup: ...

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
    def worker(self) -> TaskWorker: ...

    def archive(self) -> ParetoArchive:
        return ParetoArchive([Objective(n, d) for n, d in self.objectives], self.reference_point)


def task_objectives(cfg: Any) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """A config's objectives and reference point, without building data or models."""
    if cfg.task.kind == "merge":
        objs = [(o.name, o.direction) for o in cfg.task.objectives]
        ref = {o.name: (o.reference if o.reference is not None else 0.0)
               for o in cfg.task.objectives}
        return objs, ref
    if cfg.task.kind == "synthetic":
        return [("score", "maximize")], {"score": 0.0}
    return [("accuracy", "maximize")], {"accuracy": 0.0}


def build_task(cfg: Any, origin: str = "<config>", prepare: bool = True) -> Task:
    """The task a config names. `prepare=False` skips what needs data or weights (enough to
    decode genomes, e.g. for export)."""
    if cfg.task.kind == "merge":
        from evomerge.tasks.merge import MergeTask

        return MergeTask(cfg, origin, prepare)
    if cfg.task.kind == "synthetic":
        from evomerge.tasks.synthetic import SyntheticTask

        return SyntheticTask(cfg)
    from evomerge.tasks.digits import DigitsTask

    return DigitsTask(cfg)
