"""Optuna samplers (TPE, NSGA-II, GP) through Optuna's ask/tell: baselines, and the
multi-objective controller (NSGA-II) for Pareto runs.

The study lives in Optuna's storage API, never in a pickle of Optuna's objects: their
internals change between releases (optuna 5.1 put a thread lock into the study's sampler,
and pickling the study stopped working). In a run the storage is a journal file beside the
trial log (`optuna_journal.log`, one JSON line per storage operation). The journal is written
live and so runs ahead of the checkpoint; a checkpoint records only its length then (with a
digest of its last bytes and the trial count, to notice a replaced journal), and resume cuts
it back to that length before opening it, so the study is exactly as it was at the
checkpoint and replaying the trial log asks the same trials again. Without a run directory
(tests, scripts) the journal is kept in memory and its text is the state.

A sampler's random state is not in the storage, so each ask gets a fresh sampler seeded from
(seed, trials in the study): proposals depend only on what the storage holds, and a resumed
run proposes what the live run did. Nothing else a sampler keeps decides a proposal: NSGA-II
keeps its generations and parents in trial and study attributes in the storage, TPE only a
search-space cache, GP the last kernel fit as a warm start (each ask now fits from scratch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
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


class _BoxNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II told its search space, the run's fixed box, instead of inferring it as the
    intersection of every completed trial's distributions: a fresh sampler per ask (see the
    module docstring) cannot reuse that inference's cache, so it cost 3/4 of each ask at
    2,000 trials. The same space the inference gives once a trial is complete (sorted by
    name, single-valued ones left to independent sampling); before that NSGA-II samples
    every parameter independently either way."""

    box: dict[str, optuna.distributions.BaseDistribution] = {}

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial
                                    ) -> dict[str, optuna.distributions.BaseDistribution]:
        return self.box


Sampler = Literal["tpe", "nsga2", "gp"]
SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler, "nsga2": _BoxNSGAII,
    "gp": optuna.samplers.GPSampler}
JOURNAL = "optuna_journal.log"  # the file in the run directory
STUDY = "evomerge"  # the study's name in the journal
TAIL_BYTES = 4096  # how much of the journal's end a checkpoint's digest covers


class JournalError(ValueError):
    """A controller state or journal that cannot continue the study exactly."""


class _Journal(BaseJournalBackend):
    """The study's operation log behind Optuna's public backend interface: kept in memory
    (this process is its only reader) and, in a run, appended to a file as one JSON line per
    operation. The file format is this module's own, not an Optuna internal, so an Optuna
    release cannot change it under a run; it needs no lock file or fsync per operation as
    Optuna's JournalFileBackend does (78 ms a trial at 20 genes here, against 2.5 ms), since
    only the process holding the run's lock writes it and a checkpoint flushes it (`_sync`)
    before recording its length; anything after that length is cut off on resume."""

    def __init__(self, text: str = "", path: Path | None = None):
        self.lines = text.splitlines(keepends=True)  # whole lines only (see `_prepare_file`)
        self.path = path

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.lines[log_number_from:]]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        new = [_line(x) for x in logs]
        self.lines.extend(new)
        if self.path is not None:
            with open(self.path, "ab") as f:
                f.write("".join(new).encode())


def _line(log: dict[str, Any]) -> str:
    """One operation, one line (the same layout as Optuna's JournalFileBackend)."""
    return json.dumps(log, separators=(",", ":")) + "\n"


def _sync(path: Path) -> int:
    """Flush the journal to disk; returns its length."""
    with open(path, "ab") as f:
        os.fsync(f.fileno())
    return path.stat().st_size


def _tail_digest(path: Path, length: int) -> str:
    """A digest of the journal's last bytes before `length` (cheap at any journal size)."""
    with open(path, "rb") as f:
        f.seek(max(0, length - TAIL_BYTES))
        return hashlib.blake2b(f.read(min(length, TAIL_BYTES)), digest_size=8).hexdigest()


def _check_journal(path: Path, saved: dict[str, Any]) -> None:
    """The journal must hold, unchanged, everything the checkpoint counted on (read only:
    it is called before the run holds its lock)."""
    length = saved["journal_bytes"]
    if length == 0:
        return
    advice = ("restore it from a backup; without it the run cannot continue exactly (start "
              "a new run with another --run-dir; `evomerge report` still reads this one)")
    if not path.exists():
        raise JournalError(f"{path}: missing, but the checkpoint records {length} bytes of "
                           f"the Optuna study in it; {advice}")
    size = path.stat().st_size
    if size < length:
        raise JournalError(f"{path}: holds {size} bytes but the checkpoint records {length}: "
                           f"the journal was truncated or replaced; {advice}")
    if _tail_digest(path, length) != saved["journal_tail"]:
        raise JournalError(f"{path}: its bytes up to {length} are not the ones the "
                           f"checkpoint records: the journal was edited or replaced; {advice}")


class OptunaSearch(Controller):
    """One Optuna study behind ask/tell, its storage a journal (see the module docstring)."""

    name = "optuna"

    def __init__(self, lower: np.ndarray, upper: np.ndarray, objectives: list[tuple[str, str]],
                 sampler: Sampler = "tpe", seed: int = 0, x0: np.ndarray | None = None,
                 journal: str | Path | None = None, initial: list[np.ndarray] | None = None):
        """`journal`: the study's journal file (a run's `optuna_journal.log`); None keeps it
        in memory. `initial`: points asked first after x0 (the run's baselines). Nothing is
        read or written until the first ask or tell."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if sampler not in SAMPLERS:
            raise ValueError(f"controller.sampler: {sampler!r} is not one of {list(SAMPLERS)}")
        self.objectives = objectives
        self.sampler, self.seed = sampler, seed
        self.x0 = None if x0 is None else np.asarray(x0, dtype=np.float64)
        self.initial = [np.asarray(g, dtype=np.float64) for g in initial or []]
        self.dists = {f"x{i}": optuna.distributions.FloatDistribution(float(lo), float(hi))
                      for i, (lo, hi) in enumerate(zip(lower, upper, strict=True))}
        self.journal = Path(journal) if journal is not None else None
        self.memory = _Journal()
        # the journal state loaded from a checkpoint (length 0: a new study)
        self.saved: dict[str, Any] = {"journal_bytes": 0}
        self._study: optuna.Study | None = None
        self.best_f, self.best_x = -np.inf, None

    # --- the study ---------------------------------------------------------------------
    @property
    def study(self) -> optuna.Study:
        """The study, opened on first use: by then the run holds its lock."""
        if self._study is None:
            self._study = self._open()
        return self._study

    def _open(self) -> optuna.Study:
        backend = self._prepare_file() if self.journal is not None else self.memory
        storage = JournalStorage(backend)
        if not storage.get_all_studies():
            study = optuna.create_study(storage=storage, study_name=STUDY,
                                        directions=[d for _, d in self.objectives])
            first = [] if self.x0 is None else [self.x0]
            for x in [*first, *(g for g in self.initial
                               if not any(np.array_equal(g, f) for f in first))]:
                study.enqueue_trial({k: float(v) for k, v in zip(self.dists, x, strict=True)})
            return study
        study = optuna.load_study(study_name=STUDY, storage=storage)
        count, expected = len(study.get_trials(deepcopy=False)), self.saved.get("trials")
        if expected is not None and count != expected:
            raise JournalError(f"{self.journal or 'the journal'}: holds {count} trials where "
                               f"the checkpoint records {expected}")
        return study

    def _prepare_file(self) -> _Journal:
        """The journal as the checkpoint left it: cut back to its recorded length (what was
        written after the checkpoint is asked again), or removed for a new study."""
        path = self.journal
        _check_journal(path, self.saved)
        if self.saved["journal_bytes"] == 0:
            path.unlink(missing_ok=True)
            return _Journal(path=path)
        os.truncate(path, self.saved["journal_bytes"])
        return _Journal(path.read_text(), path)

    def _fresh_sampler(self, trials: int) -> optuna.samplers.BaseSampler:
        """A sampler whose randomness depends only on the seed and the study's size."""
        seed = int(np.random.SeedSequence([self.seed, trials]).generate_state(1)[0])
        with warnings.catch_warnings():  # GPSampler is experimental in optuna 4.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = SAMPLERS[self.sampler](seed=seed)
        if isinstance(sampler, _BoxNSGAII):
            sampler.box = {k: d for k, d in sorted(self.dists.items()) if not d.single()}
        return sampler

    # --- ask / tell --------------------------------------------------------------------
    def ask(self) -> list[Candidate]:
        """One trial from the study, its id the Optuna trial number, sampled reproducibly."""
        study = self.study
        study.sampler = self._fresh_sampler(len(study.get_trials(deepcopy=False)))
        trial = study.ask(self.dists)
        x = np.array([trial.params[k] for k in self.dists])
        return [Candidate(trial.number, x)]

    def tell(self, results: list[tuple[Candidate, Result]]) -> None:
        """Tell the study each trial's objectives by trial number (failures as FAIL)."""
        for cand, res in results:
            # by number: the trial may have been asked before a resume
            if res.status != "ok":
                self.study.tell(int(cand.id), state=optuna.trial.TrialState.FAIL)
                continue
            self.study.tell(int(cand.id), [res.objectives[name] for name, _ in self.objectives])
            if res.fitness > self.best_f:
                self.best_f, self.best_x = res.fitness, cand.genome

    def best_genome(self) -> np.ndarray | None:
        """The genome with the highest fitness told so far."""
        return self.best_x

    # --- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain numbers and text: where the journal stood (or, in memory, its text)."""
        state: dict[str, Any] = {"best_f": float(self.best_f), "best_x": self.best_x}
        if self.journal is None:
            return {**state, "journal_text": self.memory.text}
        if self._study is None:  # not opened since loaded: the journal is as it was
            return {**state, **self.saved}
        length = _sync(self.journal)
        return {**state, "journal_bytes": length,
                "journal_tail": _tail_digest(self.journal, length),
                "trials": len(self._study.get_trials(deepcopy=False))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the best so far and check the journal still matches what state_dict recorded."""
        if "blob" in state:
            raise JournalError(
                "this checkpoint holds a pickled Optuna study (written by an older evomerge), "
                "which this version does not load: start a new run (`evomerge report` still "
                "reads this one)")
        key = "journal_text" if self.journal is None else "journal_bytes"
        if key not in state:
            where = "in memory" if self.journal is None else "in a journal file"
            raise JournalError(f"this Optuna state was not saved {where}; construct the "
                               "controller as the one that saved it")
        self._study = None
        self.best_f, self.best_x = state["best_f"], state["best_x"]
        if self.journal is None:
            self.memory = _Journal(state["journal_text"])
            return
        self.saved = {k: state[k] for k in ("journal_bytes", "journal_tail", "trials")
                      if k in state}
        _check_journal(self.journal, self.saved)


# what Optuna's journal adds per gene of every trial, measured at 8-500 genes: 300-350 B
OPTUNA_JOURNAL_BYTES_PER_GENE = 330

# Each ask of Optuna's samplers reads and models every trial in the study, so one ask costs
# about BASE + (PER_TRIAL + PER_TRIAL_GENE * genes) * trials**POWER seconds of driver CPU,
# and a run the integral of that. Fitted on this project's 2-core machine at 8 and 32 genes
# (TPE and NSGA-II to 4,000 trials, GP to 400), NSGA-II raised to the whole trial's cost in
# results/bench_driver.md (its asks are only part of it: the journal, tell); a
# cluster's driver may be faster, not by orders of magnitude.
OPTUNA_ASK_COST: dict[str, tuple[float, float, float, float]] = {
    # sampler: (BASE, PER_TRIAL, PER_TRIAL_GENE, POWER)
    "tpe": (0.0, 8.2e-6, 2.0e-6, 1.0),
    "nsga2": (0.0, 2.2e-6, 0.04e-6, 1.0),
    "gp": (0.19, 2.6e-6, 0.12e-6, 2.0),  # a Gaussian process fitted to every trial
}
OPTUNA_DRIVER_LIMIT_S = 3600.0  # a longer estimate is refused unless allow_large_budget


def optuna_driver_seconds(sampler: str, genes: int, trials: int) -> tuple[float, float]:
    """(the last ask's seconds, all asks' seconds) of a run of `trials` trials."""
    base, per_trial, per_gene, power = OPTUNA_ASK_COST[sampler]
    slope = per_trial + per_gene * genes
    return (base + slope * trials ** power,
            base * trials + slope * trials ** (power + 1) / (power + 1))


class OptunaSpec(ControllerSpec):
    """`controller: {kind: optuna}`: the sampler; `sigma` sets the box (x0 ± 3 sigma) when the
    space has none. Refused above HIGH_DIMENSION genes unless `allow_high_dimension`, and for
    budgets whose asks alone would take the driver over an hour unless `allow_large_budget`."""

    kind: Literal["optuna"]
    sigma: float = Field(0.1, gt=0)
    sampler: Sampler = "tpe"
    allow_high_dimension: bool = False  # run Optuna above HIGH_DIMENSION genes anyway
    allow_large_budget: bool = False  # run a budget whose asks would take hours anyway

    def check_dimension(self, n: int, origin: str) -> None:
        """Every trial's n values are kept and modelled: refuse above HIGH_DIMENSION genes
        unless asked for, before anything runs."""
        if n <= HIGH_DIMENSION:
            return
        if not self.allow_high_dimension:
            raise ConfigError(
                f"{origin}: controller: Optuna's {self.sampler} sampler on {n} genes (more "
                f"than {HIGH_DIMENSION}) keeps and models every trial's {n} values, so each "
                f"trial costs more than the last and the study's journal grows by "
                f"~{n * OPTUNA_JOURNAL_BYTES_PER_GENE / 2**20:.1f} MiB per trial; use cmaes "
                "(separable at this size) or m2n2, or set "
                "controller.allow_high_dimension: true to run it anyway")
        log.warning("controller: Optuna on %d genes; the study's journal grows by ~%.1f MiB "
                    "per trial", n, n * OPTUNA_JOURNAL_BYTES_PER_GENE / 2**20)

    def check_budget(self, genes: int, budget: int, origin: str) -> None:
        """Each ask models every trial so far: refuse a budget whose asks alone would keep
        the driver busy for over an hour (a cluster idles behind it), before anything runs."""
        last, total = optuna_driver_seconds(self.sampler, genes, budget)
        if total <= OPTUNA_DRIVER_LIMIT_S or self.allow_large_budget:
            return
        raise ConfigError(
            f"{origin}: budget: Optuna's {self.sampler} sampler models every trial at each "
            f"ask; over {budget:,} trials of {genes} genes its asks would take the driver "
            f"~{total / 3600:.1f} h (the last ones ~{last:.1f} s each, while workers wait); "
            "use m2n2, cmaes or random for long runs, lower the budget, or set "
            "controller.allow_large_budget: true to run it anyway")

    def build(self, setup: ControllerSetup, ctx: SearchContext) -> OptunaSearch:
        """The study, kept in the run directory's journal (in memory without one)."""
        x0 = np.asarray(setup.x0, dtype=np.float64)
        self.check_dimension(len(x0), ctx.origin)
        self.check_budget(len(x0), ctx.budget, ctx.origin)
        if setup.lower is not None and setup.upper is not None:
            lo, hi = setup.lower, setup.upper
        else:
            lo, hi = x0 - 3 * self.sigma, x0 + 3 * self.sigma
        return OptunaSearch(lo, hi, ctx.objectives, self.sampler, ctx.seed, x0,
                            journal=ctx.run_dir / JOURNAL if ctx.run_dir is not None else None,
                            initial=setup.starts)
