"""Optuna samplers (TPE, NSGA-II, GP) through Optuna's ask/tell: baselines, and the
multi-objective controller (NSGA-II) for Pareto runs. The in-memory study pickles whole, which
is the checkpoint."""

from __future__ import annotations

import pickle
from typing import Any, Literal

import numpy as np

from evomerge.search.protocol import Candidate, Controller, Result

Sampler = Literal["tpe", "nsga2", "gp"]


class OptunaSearch(Controller):
    name = "optuna"

    def __init__(self, lower: np.ndarray, upper: np.ndarray, objectives: list[tuple[str, str]],
                 sampler: Sampler = "tpe", seed: int = 0, x0: np.ndarray | None = None):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        samplers = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                    "gp": optuna.samplers.GPSampler}
        if sampler not in samplers:
            raise ValueError(f"controller.sampler: {sampler!r} is not one of {list(samplers)}")
        self.objectives = objectives
        self.dists = {f"x{i}": optuna.distributions.FloatDistribution(float(lo), float(hi))
                      for i, (lo, hi) in enumerate(zip(lower, upper, strict=True))}
        self.study = optuna.create_study(sampler=samplers[sampler](seed=seed),
                                         directions=[d for _, d in objectives])
        if x0 is not None:
            self.study.enqueue_trial({k: float(v) for k, v in zip(self.dists, x0, strict=True)})
        self.trials: dict[int, Any] = {}
        self.best_f, self.best_x = -np.inf, None

    def ask(self) -> list[Candidate]:
        trial = self.study.ask(self.dists)
        x = np.array([trial.params[k] for k in self.dists])
        self.trials[trial.number] = trial
        return [Candidate(trial.number, x)]

    def tell(self, results: list[tuple[Candidate, Result]]) -> None:
        import optuna

        for cand, res in results:
            trial = self.trials.pop(cand.id)
            if res.status != "ok":
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            self.study.tell(trial, [res.objectives[name] for name, _ in self.objectives])
            if res.fitness > self.best_f:
                self.best_f, self.best_x = res.fitness, cand.genome

    def best_genome(self) -> np.ndarray | None:
        return self.best_x

    def state_dict(self) -> dict[str, Any]:
        return {"blob": pickle.dumps(self.__dict__)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(pickle.loads(state["blob"]))
