"""CMA-ES on pycma (docs/design.md §5): the paper's PS setting and restarts.

Defaults: x0 from the space (0.5 in the unit box), σ₀ = 1/6, population 4 + ⌊3 ln n⌋; bounds
through pycma's boundary handler; `separable` (diagonal covariance) for high dimensions;
IPOP or BIPOP restarts; the step-size rule (pycma's CSA or TPA) selectable. pycma minimises,
so fitness is negated. pycma samples from numpy's global RNG, so that state travels with the
checkpoint; the budget is exact: the last generation is asked only partly and never told.

The checkpoint pickles the `cma.CMAEvolutionStrategy`. That is pycma's own way to save and
resume a strategy (`CMAEvolutionStrategy.pickle_dumps` and the resume example in its class
docstring), its objects hold numpy arrays and plain Python (no locks, files or threads; we
never give it an objective function), and the round trip is exact (tested). What pickle
cannot promise is a round trip between pycma versions, whose internals may differ: the state
records `cma.__version__`, and loading it under another version logs a warning when it
loads and, when it does not, names the version to reinstall (`CMAVersionError`).
"""

from __future__ import annotations

import logging
import math
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import psutil
from pydantic import Field

from evomerge.errors import ConfigError
from evomerge.search.protocol import (
    HIGH_DIMENSION,
    Candidate,
    Controller,
    ControllerSetup,
    ControllerSpec,
    Result,
    SearchContext,
)

log = logging.getLogger(__name__)


class CMAVersionError(ValueError):
    """A checkpointed strategy that the installed pycma cannot unpickle."""


def _global_randn(*shape: int) -> np.ndarray:
    """pycma's sampler. Its default, the bound method `np.random.randn`, pickles as a private
    copy of the global RandomState, so a checkpointed strategy would stop following the stream
    this controller swaps in; a module-level function pickles by name."""
    return np.random.randn(*shape)


@dataclass
class CMAESSettings:
    """The CMA-ES knobs a config may set: step size, population, restarts, σ adaptation."""
    sigma0: float = 1 / 6
    popsize: int | None = None  # None: 4 + floor(3 ln n)
    separable: bool = False
    restarts: Literal["none", "ipop", "bipop"] = "none"
    max_restarts: int = 9
    # pycma's own choice is TPA from 300 dimensions on; on a plateau-ridden fitness (accuracy)
    # TPA reads ties as failures and shrinks σ ~40x within 10k evaluations, where CSA holds it
    step_size: Literal["auto", "csa", "tpa"] = "auto"


class CMAES(Controller):
    """CMA-ES (pycma) maximising fitness, with optional IPOP/BIPOP restarts."""
    name = "cmaes"
    outstanding_resumes = False  # a half-told generation checkpoints as it was when asked

    def at_boundary(self) -> bool:
        """Whether a state taken now includes every tell so far (not mid-generation)."""
        return not self._solutions

    def __init__(self, x0: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None,
                 budget: int, settings: CMAESSettings | None = None, seed: int = 0):
        self.s = settings or CMAESSettings()
        self.x0 = np.asarray(x0, dtype=np.float64)
        self.lower, self.upper = lower, upper
        self.budget = budget
        self.seed = seed
        self.default_popsize = self.s.popsize or 4 + int(3 * math.log(len(self.x0)))
        self.restart = 0
        self.large_popsize = self.default_popsize
        self.spent = {"large": 0, "small": 0}
        self.regime = "large"
        self.asked = 0
        self.next_id = 0
        self.best_x: np.ndarray | None = None
        self.best_f = -np.inf
        self._generation: list[Candidate] = []
        self._solutions: list[np.ndarray] = []
        self._told: dict[int, float] = {}
        self._np_rng = np.random.RandomState(seed)
        self._boundary: bytes | None = None
        self.es = self._new_es(self.default_popsize, self.s.sigma0)

    def _new_es(self, popsize: int, sigma0: float):
        import cma

        opts: dict[str, Any] = {"popsize": popsize, "verbose": -9,
                                # pycma seeds numpy only with its default sampler; we seed
                                # our own stream below, so it must leave numpy alone
                                "seed": np.nan,
                                "CMA_diagonal": self.s.separable, "tolfun": 1e-12,
                                "maxfevals": math.inf, "randn": _global_randn,
                                # discrete scores (accuracy) plateau often: let pycma widen
                                # its step size instead of stopping on a flat generation
                                "tolflatfitness": math.inf}
        if self.s.step_size != "auto":
            from cma import sigma_adaptation

            opts["AdaptSigma"] = {"csa": sigma_adaptation.CMAAdaptSigmaCSA,
                                  "tpa": sigma_adaptation.CMAAdaptSigmaTPA}[self.s.step_size]
        if self.lower is not None and self.upper is not None:
            opts["bounds"] = [list(map(float, self.lower)), list(map(float, self.upper))]
        outer = np.random.get_state()
        np.random.seed(self.seed * 1000 + self.restart + 1)
        es = cma.CMAEvolutionStrategy(self.x0.tolist(), sigma0, opts)
        self._np_state = np.random.get_state()
        np.random.set_state(outer)
        return es

    def ask(self, limit: int | None = None) -> list[Candidate]:
        """The rest of the current generation (at most `limit`, and never past the budget)."""
        if not self._solutions:
            if self.es.stop() and self.s.restarts != "none" and self.restart < self.s.max_restarts:
                self._restart()
            self._boundary = None
            self._boundary = pickle.dumps(self.__dict__)
            with self._own_rng():
                self._solutions = [np.asarray(x) for x in self.es.ask()]
            self._generation = []
            self._told = {}
        remaining = self.budget - self.asked
        start = len(self._generation)
        n = min(len(self._solutions) - start, remaining, limit if limit else math.inf)
        out = []
        for x in self._solutions[start:start + int(n)]:
            cand = Candidate(self.next_id, x.copy(), {"restart": self.restart})
            self.next_id += 1
            self._generation.append(cand)
            out.append(cand)
        self.asked += len(out)
        return out

    def tell(self, results: list[tuple[Candidate, Result]]) -> None:
        """Record fitnesses (failures as worst); once the generation is complete, update pycma."""
        for cand, res in results:
            f = res.fitness if res.status == "ok" and np.isfinite(res.fitness) else -1e300
            self._told[cand.id] = f
            if f > self.best_f:
                self.best_f, self.best_x = f, cand.genome
        if len(self._told) == len(self._solutions) and self._solutions:
            fits = [-self._told[c.id] for c in self._generation]
            with self._own_rng():
                self.es.tell(self._solutions, fits)
            self.spent[self.regime] += len(self._solutions)
            self._solutions, self._generation, self._told = [], [], {}

    @contextmanager
    def _own_rng(self):
        """pycma draws from numpy's global RNG; swap in this controller's own stream."""
        outer = np.random.get_state()
        np.random.set_state(self._np_state)
        try:
            yield
        finally:
            self._np_state = np.random.get_state()
            np.random.set_state(outer)

    def _restart(self) -> None:
        """IPOP doubles the population each restart; BIPOP interleaves small-population runs
        with random σ₀ whenever they have used less budget than the large-population regime."""
        self.restart += 1
        rng = self._np_rng
        if self.s.restarts == "ipop" or self.spent["small"] >= self.spent["large"]:
            self.regime = "large"
            self.large_popsize *= 2
            self.es = self._new_es(self.large_popsize, self.s.sigma0)
        else:
            self.regime = "small"
            u = rng.uniform()
            ratio = self.large_popsize / (2 * self.default_popsize)
            pop = max(2, int(self.default_popsize * ratio ** (rng.uniform() ** 2)))
            self.es = self._new_es(pop, self.s.sigma0 * 10 ** (-2 * u))

    def best_genome(self) -> np.ndarray | None:
        """The best genome told so far, over all restarts."""
        return self.best_x

    def state_dict(self) -> dict[str, Any]:
        """Pickled controller; mid-generation, the snapshot taken when the generation was asked."""
        # pycma's state does not survive a round trip between ask and tell (its tell then
        # updates differently), so a half-told generation checkpoints as the snapshot taken
        # when it was asked: loading it asks the same generation again, with the same ids.
        import cma

        blob = self._boundary if self._solutions else \
            pickle.dumps({**self.__dict__, "_boundary": None})
        return {"blob": blob, "cma_version": cma.__version__}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Loads a strategy pickled by another pycma only with a warning, since its internals
        may differ; one that does not load names the version that can load it."""
        import cma

        saved, installed = state.get("cma_version"), cma.__version__
        try:
            inner = pickle.loads(state["blob"])
        except Exception as exc:
            raise CMAVersionError(_unloadable(saved, installed, exc)) from exc
        if saved != installed:
            log.warning("the CMA-ES state was saved with cma %s and is resumed with cma %s; "
                        "it loaded, but a resumed run may not repeat what that version would "
                        "have proposed", saved or "(not recorded)", installed)
        self.__dict__.update(inner)


def _unloadable(saved: str | None, installed: str, exc: Exception) -> str:
    why = f"{type(exc).__name__}: {exc}"
    if saved is None:
        return (f"the CMA-ES state does not load with the installed cma {installed} ({why}); "
                "it was saved by an older evomerge that did not record its cma version: "
                "reinstall the cma it ran with to resume, or start a new run")
    if saved == installed:
        return f"the CMA-ES state does not load ({why}); start a new run"
    return (f"the CMA-ES state was saved with cma {saved} and does not load with the "
            f"installed cma {installed} ({why}); reinstall that version "
            f"(pip install 'cma=={saved}') to resume this run, or start a new run")


def full_cmaes_bytes(n: int) -> int:
    """Memory of full-covariance pycma at n genes: C and B (n x n float64 each), and as much
    again for the pickled snapshot a checkpoint holds."""
    return 4 * n * n * 8


class CMAESSpec(ControllerSpec):
    """`controller: {kind: cmaes}`: pycma's CMA-ES, separable above HIGH_DIMENSION genes."""

    kind: Literal["cmaes"]
    sigma0: float | None = Field(None, gt=0)
    popsize: int | None = Field(None, ge=2)
    # auto: full covariance up to HIGH_DIMENSION genes, diagonal above (false forces full)
    separable: bool | Literal["auto"] = "auto"
    restarts: Literal["none", "ipop", "bipop"] = "none"
    step_size: Literal["auto", "csa", "tpa"] = "auto"

    def is_separable(self, n: int, origin: str) -> bool:
        """Whether CMA-ES runs diagonal at n genes; full covariance that would not fit in
        memory is refused here, before anything runs."""
        separable = self.separable if self.separable != "auto" else n > HIGH_DIMENSION
        if not separable and n > HIGH_DIMENSION:
            need, free = full_cmaes_bytes(n), psutil.virtual_memory().available
            if need > free // 2:
                raise ConfigError(
                    f"{origin}: controller.separable: full-covariance CMA-ES on {n} genes "
                    f"needs ~{need / 2**30:.1f} GiB (n x n matrices; the checkpoint holds half "
                    f"of it), and {free / 2**30:.1f} GiB is free; remove `separable: false` "
                    f"(separable above {HIGH_DIMENSION} genes) or search fewer genes")
            log.warning("controller.separable: false on %d genes: CMA-ES keeps n x n "
                        "matrices (~%.2f GiB, a checkpoint of ~%.2f GiB)", n, need / 2**30,
                        need / 2**31)
        return bool(separable)

    def build(self, setup: ControllerSetup, ctx: SearchContext) -> CMAES:
        """CMA-ES from the task's x0 and box, over the run's budget."""
        x0 = np.asarray(setup.x0, dtype=np.float64)
        separable = self.is_separable(len(x0), ctx.origin)
        # separable because of the dimension: CSA, since pycma's own choice there (TPA)
        # collapses the step size on accuracy plateaus (docs/design.md §5)
        step = "csa" if self.separable == "auto" and separable and self.step_size == "auto" \
            else self.step_size
        settings = CMAESSettings(sigma0=self.sigma0 or 1 / 6, popsize=self.popsize,
                                 separable=separable, restarts=self.restarts, step_size=step)
        return CMAES(x0, setup.lower, setup.upper, ctx.budget, settings, seed=ctx.seed)
