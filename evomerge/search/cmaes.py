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
import warnings
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
    # a free worker always gets a candidate: see CMAES (asynchronous generations)
    asynchronous: bool = False


class CMAES(Controller):
    """CMA-ES (pycma) maximising fitness, with optional IPOP/BIPOP restarts.

    Generational (the default with one evaluation slot): a generation is asked whole and
    pycma is told once all of it is scored, so workers idle while its slowest members run.

    Asynchronous (`asynchronous`): candidates are handed out one per free worker. Once every
    member of the current population is out, a free worker gets another sample of the same
    distribution (pycma's `ask` again: the mean and covariance do not change before `tell`).
    pycma is told as soon as λ results of the current distribution have arrived, the first
    λ to arrive. Samples still out at that moment are not wasted: they are injected into
    the next generation (pycma's `inject`, unrepaired: the genome a worker is scoring) and
    told with it when they arrive, as pycma treats external solutions (docs/design.md §5
    has the measured price). With one worker nothing is ever drawn beyond the population
    and the run is the generational one.
    Step size by CSA and no mirrored samples: TPA and mirroring read fixed pairs of a
    population, which arrival order does not keep.
    """
    name = "cmaes"

    @property
    def outstanding_resumes(self) -> bool:  # type: ignore[override]
        """Generational: a half-told generation checkpoints as it was when asked, and is
        asked again. Asynchronous: every state is exact; the loop keeps what is out."""
        return self.s.asynchronous

    def at_boundary(self) -> bool:
        """Whether a state taken now includes every tell so far (not mid-generation)."""
        return self.s.asynchronous or not self._solutions

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
        self._told: dict[int, float] = {}  # by candidate id, in arrival order
        self._first_id = 0  # the id of the current generation's first fresh candidate
        self._extra_batches = 0  # pycma asks beyond the first in this generation (async)
        self._carry: list[tuple[int, np.ndarray]] = []  # (id, genotype) for the next one
        self._carried: dict[int, int] = {}  # carried candidate id -> its solution index
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
        if self.s.asynchronous:
            opts["CMA_mirrors"] = 0
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
        """The rest of the current generation (at most `limit`, and never past the budget);
        asynchronous: one candidate, drawn beyond the population once all of it is out."""
        if not self._solutions:
            if self.es.stop() and self.s.restarts != "none" and self.restart < self.s.max_restarts:
                self._restart()
            self._boundary = None
            self._boundary = pickle.dumps(self.__dict__)
            self._start_generation()
        remaining = self.budget - self.asked
        start = len(self._carried) + len(self._generation)  # the next solution to hand out
        if self.s.asynchronous:
            limit = 1
            if start == len(self._solutions) and remaining > 0:
                self._draw_more()
        n = min(len(self._solutions) - start, remaining, limit if limit else math.inf)
        out = []
        for x in self._solutions[start:start + int(n)]:
            cand = Candidate(self.next_id, x.copy(), {"restart": self.restart})
            self.next_id += 1
            self._generation.append(cand)
            out.append(cand)
        self.asked += len(out)
        return out

    def _start_generation(self) -> None:
        """Sample the population; asynchronous: the samples still out when the last update
        came are injected first (pycma's `inject`, unrepaired), to be told with it."""
        with self._own_rng():
            if self._carry:
                self.es.inject([g for _, g in self._carry], force=True)
            self._solutions = [np.asarray(x) for x in self.es.ask()]
        self._carried = {cid: i for i, (cid, _) in enumerate(self._carry)}
        self._carry = []
        self._generation, self._told = [], {}
        self._first_id = self.next_id
        self._extra_batches = 0

    def _draw_more(self) -> None:
        """Another population's worth of samples from the current distribution."""
        with self._own_rng():
            self._solutions += [np.asarray(x) for x in self.es.ask()]
        self._extra_batches += 1

    def _slot(self, cand_id: int) -> int | None:
        """Where a candidate sits in the current generation's solutions (None: not there)."""
        if cand_id in self._carried:
            return self._carried[cand_id]
        if self._first_id <= cand_id < self._first_id + len(self._generation):
            return len(self._carried) + cand_id - self._first_id
        return None

    def tell(self, results: list[tuple[Candidate, Result]]) -> None:
        """Record fitnesses (failures as worst); once the generation is complete (async:
        once λ of its samples are scored), update pycma."""
        for cand, res in results:
            f = res.fitness if res.status == "ok" and np.isfinite(res.fitness) else -1e300
            if f > self.best_f:
                self.best_f, self.best_x = f, cand.genome
            slot = self._slot(cand.id)
            if slot is None:  # a sample of a distribution already updated (asynchronous)
                continue
            self._told[slot] = f
            if self.s.asynchronous and len(self._told) == self.es.popsize:
                self._update_async()
        if not self.s.asynchronous and len(self._told) == len(self._solutions) \
                and self._solutions:
            fits = [-self._told[i] for i in range(len(self._solutions))]
            with self._own_rng():
                self.es.tell(self._solutions, fits)
            self.spent[self.regime] += len(self._solutions)
            self._solutions, self._generation, self._told = [], [], {}

    def _update_async(self) -> None:
        """Tell pycma the λ results in; every sample still out (carried ones first, the
        oldest) is carried into the next generation, at most λ - 2 of them so that two
        samples of each generation are its own."""
        lam = self.es.popsize
        slots = list(self._told)
        k = len(self._carried)
        out = [(cid, i) for cid, i in self._carried.items() if i not in self._told]
        out += [(c.id, k + j) for j, c in enumerate(self._generation) if k + j not in self._told]
        carry = [(cid, self._geno(self._solutions[i])) for cid, i in out[: max(0, lam - 2)]]
        with self._own_rng(), warnings.catch_warnings():
            # a sample carried again was injected once and never told: pycma calls that an
            # orphaned injection
            warnings.filterwarnings("ignore", message="orphanated injected solution")
            self.es.tell([self._solutions[i] for i in slots], [-self._told[i] for i in slots])
        # pycma keeps every asked sample it was not told about (up to ~1000: 150 MB at 19k
        # genes, in every checkpoint); the carried ones' genotypes are in `carry`
        self.es.sent_solutions.clear()
        # and every injection of a sample carried again under the same key: a slow
        # evaluation out for many generations grew it without bound (580 KB at 100,000
        # trials on 64 workers); the next generation injects what it carries afresh
        injected = getattr(self.es, "_injected_solutions_archive", None)  # cma 4.0-4.5
        if injected is not None:
            injected.clear()
        self.spent[self.regime] += lam
        self._solutions, self._generation, self._told, self._carried = [], [], {}, {}
        self._carry = carry

    def _geno(self, x: np.ndarray) -> np.ndarray:
        """pycma's genotype of a sample it returned (its bounds transform is not one-to-one)."""
        entry = self.es.sent_solutions.get(x)
        if entry is not None and entry.get("geno") is not None:
            return np.array(entry["geno"], dtype=np.float64)
        return np.array(self.es.gp.geno(x, from_bounds=self.es.boundary_handler.inverse),
                        dtype=np.float64)

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
        self._carry = []  # samples of the stopped strategy stay out of the new one
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
        # when it was asked: loading it asks the same generation again, with the same ids
        # (generational), or draws the same samples again and restores what was handed out
        # and told (asynchronous, whose state is exact at every moment).
        import cma

        blob = self._boundary if self._solutions else \
            pickle.dumps({**self.__dict__, "_boundary": None})
        state: dict[str, Any] = {"blob": blob, "cma_version": cma.__version__}
        if self.s.asynchronous and self._solutions:
            state["generation"] = {
                "extra_batches": self._extra_batches, "handed_out": len(self._generation),
                "told": [[int(i), float(f)] for i, f in self._told.items()],
                "next_id": self.next_id, "asked": self.asked, "best_f": self.best_f,
                "best_x": self.best_x}
        return state

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
        for key, value in (("_first_id", 0), ("_extra_batches", 0), ("_carry", []),
                           ("_carried", {})):  # states saved before asynchronous CMA-ES
            inner.setdefault(key, value)
        self.__dict__.update(inner)
        gen = state.get("generation")
        if gen is None:
            return
        self._boundary = state["blob"]
        self._start_generation()
        for _ in range(gen["extra_batches"]):
            self._draw_more()
        k = len(self._carried)
        self._generation = [Candidate(self._first_id + j, self._solutions[k + j].copy(),
                                      {"restart": self.restart})
                            for j in range(gen["handed_out"])]
        self._told = {int(i): float(f) for i, f in gen["told"]}
        self.next_id, self.asked = gen["next_id"], gen["asked"]
        self.best_f, self.best_x = gen["best_f"], gen["best_x"]


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
    # auto: asynchronous when the run has more than one evaluation slot (a free worker always
    # gets a candidate); one slot runs generations either way
    asynchronous: bool | Literal["auto"] = "auto"

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
        asynchronous = ctx.workers > 1 if self.asynchronous == "auto" else self.asynchronous
        if asynchronous and step == "tpa":
            raise ConfigError(
                f"{ctx.origin}: controller.step_size: tpa compares the first two samples of "
                "each generation, which asynchronous CMA-ES does not keep together; use csa, "
                "or asynchronous: false")
        if asynchronous:
            step = "csa"
        settings = CMAESSettings(sigma0=self.sigma0 or 1 / 6, popsize=self.popsize,
                                 separable=separable, restarts=self.restarts, step_size=step,
                                 asynchronous=asynchronous)
        return CMAES(x0, setup.lower, setup.upper, ctx.budget, settings, seed=ctx.seed)
