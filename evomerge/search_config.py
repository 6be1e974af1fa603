"""The search config: what to search, with which controller, for how long.

Frozen into the run directory at the start; resume compares against it, so everything that
changes the trial sequence lives here (and nothing else does).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evomerge.recipe import RecipeError, _describe


class ConfigError(ValueError):
    """A search config that cannot be used; the message names the file and field."""


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["digits"] = "digits"
    init: Literal["scratch", "pretrained"] = "scratch"
    init_sigma: float = Field(0.01, gt=0)
    # random members to start from (scratch): None fills the M2N2 archive; SakanaAI's
    # natural_niches starts from 2 and lets children fill the empty slots
    init_members: int | None = Field(None, ge=1)
    # per-sample scores: 0/1 correctness (the paper) or p(true class), continuous
    scores: Literal["correct", "p_correct"] = "correct"
    expert_steps: int = Field(10, ge=1)
    expert_lr: float = Field(3e-3, gt=0)


class ControllerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["m2n2", "cmaes", "random", "optuna"]
    # m2n2
    archive_size: int = Field(20, ge=2)
    alpha: float = Field(1.0, ge=0)
    mutation_sigma: float = Field(0.0, ge=0)
    attraction: bool = True
    split_point: bool = True
    crossover: bool = True
    sample_reward: Literal["one", "best"] = "one"
    # cmaes
    sigma0: float | None = Field(None, gt=0)
    popsize: int | None = Field(None, ge=2)
    separable: bool = False
    restarts: Literal["none", "ipop", "bipop"] = "none"
    step_size: Literal["auto", "csa", "tpa"] = "auto"
    # random
    sigma: float = Field(0.1, gt=0)
    # optuna
    sampler: Literal["tpe", "nsga2", "gp"] = "tpe"


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "search"
    seed: int = 0
    budget: int = Field(ge=1, description="evaluations")
    max_seconds: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(500, ge=1)
    task: TaskSpec = Field(default_factory=TaskSpec)
    controller: ControllerSpec

    def digest(self, ignore_budget: bool = True) -> str:
        """What must not change across a resume (budget and time limit may grow)."""
        data = self.model_dump(mode="json")
        if ignore_budget:
            data.pop("budget")
            data.pop("max_seconds")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None


__all__ = ["ConfigError", "RecipeError", "SearchConfig", "load_config"]
