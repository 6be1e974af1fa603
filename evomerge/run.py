"""The search loop and its run directory (docs/design.md §7).

A run directory holds the frozen config (`config.yaml`), an append-only trial log
(`trials.jsonl`, one line per finished evaluation) and the controller checkpoint
(`checkpoint.pkl`, written atomically every `checkpoint_every` trials). Resume loads the
checkpoint, asks the controller again — it proposes exactly what it proposed before — and
answers from the log whatever was already evaluated, so a killed run loses at most the
evaluations in flight and an inline serial run continues with the same trial sequence.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import pickle
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.archive import Objective, ParetoArchive
from evomerge.atomic import write_bytes_atomic, write_text_atomic
from evomerge.progress import Progress
from evomerge.search.protocol import Candidate, Controller, Result
from evomerge.search_config import (
    CONTROLLER_KEYS,
    HIGH_DIMENSION,
    ConfigError,
    SearchConfig,
    load_config,
)
from evomerge.tasks.base import ControllerSetup, Task, build_task, task_objectives
from evomerge.workers import make_executor
from evomerge.workers.base import Executor, Job, Outcome

log = logging.getLogger(__name__)


class RunError(ValueError):
    """A run directory that cannot be used as asked."""


# --- compact per-sample scores -------------------------------------------------------------
# 0/1 scores are logged as bits; any others as zlib-packed float32, lossless: quantising
# continuous scores to 8 or 16 bits measurably changed what M2N2 found (digits, p_correct:
# runs stalled at 80-83% that reach 86-91% at full precision). The controller is told
# `as_logged(scores)`, so a run replayed from its log makes exactly the live run's decisions.
def _is_binary(s: np.ndarray) -> bool:
    return bool(np.all((s == 0) | (s == 1)))


def as_logged(scores: np.ndarray) -> np.ndarray:
    """The per-sample scores exactly as `decode_scores(encode_scores(scores))` returns them."""
    return np.asarray(scores, dtype=np.float32)


def encode_scores(scores: np.ndarray) -> dict[str, Any]:
    s = as_logged(scores)
    if _is_binary(s):
        return {"n": int(s.size), "bits": base64.b64encode(np.packbits(s.astype(bool))).decode()}
    raw = zlib.compress(s.astype("<f4").tobytes(), 1)
    return {"n": int(s.size), "f32z": base64.b64encode(raw).decode()}


def decode_scores(data: dict[str, Any]) -> np.ndarray:
    if "bits" in data:
        bits = np.unpackbits(np.frombuffer(base64.b64decode(data["bits"]), dtype=np.uint8))
        return bits[: data["n"]].astype(np.float32)
    if "f32z" in data:
        raw = zlib.decompress(base64.b64decode(data["f32z"]))
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    # logs written before 2026-11-22 kept continuous scores as float16
    return np.frombuffer(base64.b64decode(data["f16"]), dtype="<f2").astype(np.float32)


def genome_digest(genome: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(genome).tobytes(), digest_size=8).hexdigest()


# --- building the pieces from the config ---------------------------------------------------
def build_controller(cfg: SearchConfig, objectives: list[tuple[str, str]],
                     setup: ControllerSetup, origin: str = "<config>",
                     run_dir: Path | None = None) -> Controller:
    """The controller the config names, after the checks that keep a default from costing
    hours or gigabytes (`check_dimension`). `run_dir`: where a controller keeps files of its
    own (Optuna's journal; without it, in memory)."""
    c = cfg.controller
    x0 = np.asarray(setup.x0, dtype=np.float64)
    separable = check_dimension(cfg, len(x0), origin)
    if c.kind == "m2n2":
        from evomerge.search.m2n2 import M2N2, M2N2Settings

        settings = M2N2Settings(archive_size=c.archive_size, alpha=c.alpha,
                                mutation_sigma=c.mutation_sigma, attraction=c.attraction,
                                split_point=c.split_point, crossover=c.crossover,
                                sample_reward=c.sample_reward)
        return M2N2(setup.initial, settings, individuals=setup.individuals, seed=cfg.seed)
    if c.kind == "cmaes":
        from evomerge.search.cmaes import CMAES, CMAESSettings

        # separable because of the dimension: CSA, since pycma's own choice there (TPA)
        # collapses the step size on accuracy plateaus (docs/design.md §5)
        step = "csa" if c.separable == "auto" and separable and c.step_size == "auto" \
            else c.step_size
        settings = CMAESSettings(sigma0=c.sigma0 or 1 / 6, popsize=c.popsize,
                                 separable=separable, restarts=c.restarts, step_size=step)
        return CMAES(x0, setup.lower, setup.upper, cfg.budget, settings, seed=cfg.seed)
    if c.kind == "random":
        from evomerge.search.random_search import RandomSearch

        return RandomSearch(x0, setup.lower, setup.upper, sigma=c.sigma, seed=cfg.seed)
    from evomerge.search.optuna_search import JOURNAL, OptunaSearch

    if setup.lower is not None and setup.upper is not None:
        lo, hi = setup.lower, setup.upper
    else:
        lo, hi = x0 - 3 * c.sigma, x0 + 3 * c.sigma
    return OptunaSearch(lo, hi, objectives, c.sampler, cfg.seed, x0,
                        journal=run_dir / JOURNAL if run_dir is not None else None)


# what Optuna's journal (evomerge.search.optuna_search) adds per gene of every trial, measured
# at 8-500 genes: 300-350 B
OPTUNA_JOURNAL_BYTES_PER_GENE = 330


def full_cmaes_bytes(n: int) -> int:
    """Memory of full-covariance pycma at n genes: C and B (n x n float64 each), and as much
    again for the pickled snapshot a checkpoint holds."""
    return 4 * n * n * 8


def check_dimension(cfg: SearchConfig, n: int, origin: str) -> bool:
    """Refuse (or adapt) controller settings that are unsafe at n genes, before anything
    runs; returns whether CMA-ES is separable."""
    c = cfg.controller
    separable = c.separable if c.separable != "auto" else n > HIGH_DIMENSION
    if c.kind == "cmaes" and not separable and n > HIGH_DIMENSION:
        import psutil

        need, free = full_cmaes_bytes(n), psutil.virtual_memory().available
        if need > free // 2:
            raise ConfigError(
                f"{origin}: controller.separable: full-covariance CMA-ES on {n} genes needs "
                f"~{need / 2**30:.1f} GiB (n x n matrices; the checkpoint holds half of it), "
                f"and {free / 2**30:.1f} GiB is free; remove `separable: false` (separable "
                f"above {HIGH_DIMENSION} genes) or search fewer genes")
        log.warning("controller.separable: false on %d genes: CMA-ES keeps n x n matrices "
                    "(~%.2f GiB, a checkpoint of ~%.2f GiB)", n, need / 2**30, need / 2**31)
    if c.kind == "optuna" and n > HIGH_DIMENSION:
        if not c.allow_high_dimension:
            raise ConfigError(
                f"{origin}: controller: Optuna's {c.sampler} sampler on {n} genes (more than "
                f"{HIGH_DIMENSION}) keeps and models every trial's {n} values, so each trial "
                f"costs more than the last and the study's journal grows by "
                f"~{n * OPTUNA_JOURNAL_BYTES_PER_GENE / 2**20:.1f} MiB per trial; use cmaes "
                "(separable at this size) or m2n2, or set "
                "controller.allow_high_dimension: true to run it anyway")
        log.warning("controller: Optuna on %d genes; the study's journal grows by ~%.1f MiB "
                    "per trial", n, n * OPTUNA_JOURNAL_BYTES_PER_GENE / 2**20)
    return bool(separable)


def config_diff(old: SearchConfig, new: SearchConfig, limit: int = 3) -> str:
    """The first fields that differ, as `field: run's value → this config's value`."""
    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, dict):
            out: dict[str, Any] = {}
            for k, v in data.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: data}

    a, b = flat(old.model_dump(mode="json")), flat(new.model_dump(mode="json"))
    skip = ("budget", "max_seconds", "executor.")
    # a key only one of the two controllers reads is explained by the kinds differing
    shared = CONTROLLER_KEYS[old.controller.kind] & CONTROLLER_KEYS[new.controller.kind]
    used = {f"controller.{k}" for k in shared | {"kind"}}
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            and not k.startswith(skip) and (not k.startswith("controller.") or k in used)]
    keys.sort(key=lambda k: not k.endswith(".kind"))  # a kind that changed explains the rest
    parts = [f"{k}: {a.get(k)!r} in the run, {b.get(k)!r} here" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more


def with_executor(cfg: SearchConfig, workers: int | None, address: str | None
                  ) -> SearchConfig:
    """`--workers N` (Ray when N > 1) and `--address` over the config's executor block."""
    if workers is None and address is None:
        return cfg
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (got {workers})")
    e = cfg.executor.model_copy()
    if workers is not None:
        e.workers = workers
        e.kind = "ray" if workers > 1 else "inline"
    if address is not None:
        e.kind, e.address = "ray", address
    return cfg.model_copy(update={"executor": e})


# --- the run -------------------------------------------------------------------------------
@dataclass
class Timing:
    controller: float = 0.0
    evaluation: float = 0.0
    logging: float = 0.0
    wall: float = 0.0  # every session's running time, up to its last checkpoint


@dataclass
class RunState:
    trials: int = 0
    best: dict[str, Any] | None = None
    best_genome: np.ndarray | None = None
    timing: Timing = field(default_factory=Timing)


class SearchRun:
    """One run directory: create it, resume it, run it to its budget.

    Nothing is written until the run is able to start: the task built, the controller built
    and checked, the checkpoint loaded and the log checked against it. Only then is the
    config (or a resume's new budget) frozen into `config.yaml`."""

    def __init__(self, run_dir: Path, cfg: SearchConfig, task: Task | None = None,
                 write_config: bool = False, origin: str | None = None):
        self.dir = Path(run_dir)
        self.origin = origin or str(self.dir / "config.yaml")  # the file errors name
        self.cfg = cfg
        self.task = task
        self.trials_path = self.dir / "trials.jsonl"
        self.ckpt_path = self.dir / "checkpoint.pkl"
        self.state_path = self.dir / "state.json"
        self._write_config = write_config
        self._lock_file: Any = None  # held while this process runs the search
        self.state: RunState | None = None  # set once the run has started

    # --- opening -----------------------------------------------------------------------
    @classmethod
    def create(cls, config_path: str | Path, run_dir: str | Path, budget: int | None = None,
               seed: int | None = None, workers: int | None = None,
               address: str | None = None) -> SearchRun:
        cfg = with_executor(load_config(config_path, {"budget": budget, "seed": seed}),
                            workers, address)
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise RunError(f"--run-dir: {run_dir} exists and is not a directory")
        if (run_dir / "config.yaml").exists():
            existing = load_config(run_dir / "config.yaml", frozen=True)
            if existing.digest() != cfg.digest():
                raise RunError(
                    f"{run_dir}: holds a run of a different config ({config_diff(existing, cfg)}"
                    f"); use `evomerge resume {run_dir}` or another --run-dir")
            # the config's own budget does not override the run's (only --budget does)
            return cls.open(run_dir, budget=budget, workers=workers, address=address)
        # Build (and so validate) the task first: a bad source, file or objective fails here,
        # naming the config file and field, and leaves no run directory.
        task = build_task(cfg, str(config_path))
        return cls(run_dir, cfg, task, write_config=True, origin=str(config_path))

    @classmethod
    def open(cls, run_dir: str | Path, budget: int | None = None, workers: int | None = None,
             address: str | None = None) -> SearchRun:
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").exists():
            raise RunError(f"{run_dir}: not a run directory (no config.yaml)")
        cfg = with_executor(load_config(run_dir / "config.yaml", frozen=True), workers,
                            address)
        run = cls(run_dir, cfg)
        if budget is not None:
            # checked against the log where the run reads it (`_run`), not read twice here
            if budget != cfg.budget:  # frozen once the run is able to continue
                run.cfg = cfg.model_copy(update={"budget": budget})
                run._write_config = True
        return run

    # --- log and checkpoint --------------------------------------------------------------
    def read_log(self, repair: bool = False) -> list[dict[str, Any]]:
        """Trial lines. A torn last line (killed mid-write, or being written right now) is
        ignored, and cut off the file with `repair` (only the process holding the run's
        lock may). Any other line that is not a trial record is an error naming its line."""
        if not self.trials_path.exists():
            return []
        raw = self.trials_path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end != len(raw) and repair:
            with open(self.trials_path, "r+b") as f:
                f.truncate(end)
        lines = []
        for number, text in enumerate(raw[:end].splitlines(), start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                if not isinstance(line, dict) or not _TRIAL_KEYS <= set(line):
                    raise ValueError(f"not a trial record (a trial line has the keys "
                                     f"{sorted(_TRIAL_KEYS)})")
            except ValueError as exc:
                raise RunError(
                    f"{self.trials_path}: line {number} is not a trial record ({exc}); the "
                    "log is written only by evomerge, one JSON object per line, so it was "
                    "edited or corrupted: restore it, or delete that line to evaluate that "
                    "trial again on resume") from None
            lines.append(line)
        return lines

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if not self.ckpt_path.exists():
            return None
        try:
            return pickle.loads(self.ckpt_path.read_bytes())
        except Exception as exc:
            raise RunError(f"{self.ckpt_path}: unreadable checkpoint ({exc})") from None

    def read_state(self) -> dict[str, Any] | None:
        """The small summary written beside each checkpoint (no controller state)."""
        if not self.state_path.exists():
            return None
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise RunError(f"{self.state_path}: unreadable ({exc})") from None

    def check_log(self, logged: int, checkpointed: int | None) -> None:
        """The log must hold every trial the checkpoint counts."""
        if checkpointed is not None and logged < checkpointed:
            raise RunError(
                f"{self.trials_path}: holds {logged} trial line(s) but the checkpoint "
                f"records {checkpointed} finished trials: the log was truncated, replaced or "
                "deleted. Restore it from a backup; without it the run cannot continue "
                "exactly or report its front (start a new run with another --run-dir)")

    def _checkpoint(self, controller: Controller, state: RunState,
                    outstanding: list[Candidate], capacity: int) -> None:
        """The controller's state, the candidates it no longer holds but that never finished
        (re-issued on resume) and the capacity they were asked under."""
        blob = pickle.dumps({
            "trials": state.trials,
            "config_digest": self.cfg.digest(),
            "controller": controller.state_dict(),
            "outstanding": outstanding,
            "capacity": capacity,
            "best": state.best,
            "best_genome": state.best_genome,
            "timing": state.timing,
        })
        write_bytes_atomic(self.ckpt_path, blob)
        write_text_atomic(self.state_path, json.dumps({
            "trials": state.trials, "checkpoint_bytes": len(blob),
            "timing": {"controller": state.timing.controller,
                       "evaluation": state.timing.evaluation,
                       "logging": state.timing.logging,
                       "wall": self._wall(state)}}) + "\n")

    def _wall(self, state: RunState) -> float:
        """Running time over every session (this one counted from its start)."""
        start = getattr(self, "_session", None)
        if start is None:
            return getattr(state.timing, "wall", 0.0)
        state.timing.wall = start[1] + time.monotonic() - start[0]
        return state.timing.wall

    # --- the loop ----------------------------------------------------------------------
    def run(self, stop_after: int | None = None, progress: Progress | None = None,
            executor: Executor | None = None) -> RunState:
        """Run to the budget (or `stop_after` more trials); returns the final state."""
        try:
            return self._run(stop_after, progress, executor)
        finally:
            self._unlock()

    def _run(self, stop_after: int | None, progress: Progress | None,
             executor: Executor | None) -> RunState:
        task = self.task or build_task(self.cfg, self.origin)
        self.task = task
        setup = task.controller_setup(self.cfg.controller.kind, self.cfg.controller.archive_size)
        controller = build_controller(self.cfg, task.objectives, setup, self.origin, self.dir)
        state = RunState()
        ckpt = self._load_checkpoint()
        if ckpt is not None:
            if ckpt["config_digest"] != self.cfg.digest():
                raise RunError(
                    f"{self.dir / 'config.yaml'}: changed since the run started (only budget "
                    "and max_seconds may change on resume); restore it or start a new run")
            try:
                controller.load_state_dict(ckpt["controller"])
            except ValueError as exc:  # a state this installation cannot continue from
                raise RunError(f"{self.ckpt_path}: {exc}") from None
            state = RunState(ckpt["trials"], ckpt["best"], ckpt["best_genome"], ckpt["timing"])
        self._session = (time.monotonic(), getattr(state.timing, "wall", 0.0))
        if hasattr(controller, "budget"):
            controller.budget = self.cfg.budget
        self._lock()
        logged = self.read_log(repair=True)
        self.check_log(len(logged), state.trials if ckpt is not None else None)
        if len(logged) > self.cfg.budget:  # only a lowered --budget gets here
            raise RunError(f"--budget: {self.cfg.budget} is below the {len(logged)} trials "
                           "already done")
        if executor is None and state.trials < self.cfg.budget:
            # its workers are built now: one that cannot start fails here, before any write
            executor = make_executor(self.cfg, task, self.origin)
        try:  # from here every exit (a failing first checkpoint too) closes it
            if self._write_config:  # able to run: now the config (or new budget) is frozen
                self.dir.mkdir(parents=True, exist_ok=True)
                self._lock()
                write_text_atomic(self.dir / "config.yaml", self.cfg.to_yaml())
                self._write_config = False
            self.state = state
            archive = task.archive()
            cache: dict[str, dict[str, Any]] = {}
            for line in logged:
                if line["status"] == "ok" and "cache_key" in line and _full(line):
                    cache.setdefault(line["cache_key"], line)
            for line in logged[: state.trials]:
                if line["status"] == "ok" and _full(line):
                    archive.add(line["trial"], line["objectives"])
            loop = _Loop(self, task, controller, executor, archive, cache, state, progress)
            loop.replay = {line["id"]: line for line in logged[state.trials:]}
            # the capacity the logged trials were asked under: replaying with another would ask
            # in another order (a run continued with more workers replays as it ran, then widens)
            loop.replay_capacity = (ckpt or {}).get("capacity", 1)
            for line in logged:
                loop.note_best(line)
                loop.note_status(line["status"], line.get("error"))
            for line in logged[: state.trials]:
                loop.note_rungs(line)
            if ckpt is None and executor is not None:  # resume needs the capacity from trial 0
                self._checkpoint(controller, state, [], loop.capacity)
            if progress is not None:
                # the logged trials are done (those past the checkpoint are replayed, not rerun)
                progress.start(max(state.trials, len(logged)), self.cfg.budget, loop.primary)
                if executor is not None:  # the view stays live while nothing finishes
                    executor.on_idle = lambda: progress.refresh(loop.details)
            with open(self.trials_path, "a", buffering=1) as log_file:
                loop.log = log_file
                loop.run(stop_after, (ckpt or {}).get("outstanding", []))
        finally:
            if progress is not None:
                progress.close()
            if executor is not None:
                executor.close()
        if state.trials >= self.cfg.budget:
            self.outputs = self._complete()
        return state

    def _complete(self) -> list[Path]:
        """When the budget is spent: the plots, and the best trial exported if asked."""
        from evomerge.plots import write_plots

        objectives, reference = task_objectives(self.cfg)
        written = write_plots(self.dir, self.read_log(), objectives, reference)
        if self.cfg.export_best and self.cfg.task.kind == "merge":
            from evomerge.export import export_into_run

            written.append(export_into_run(self, self.dir / "best"))
        return written

    def _lock(self) -> None:
        """One process per run directory: a second search or resume on it would interleave
        trial lines and break the log. The lock dies with its process (kill -9 included)."""
        import fcntl

        if self._lock_file is not None or not self.dir.is_dir():
            return
        f = open(self.dir / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise RunError(f"{self.dir}: another evomerge process (pid {holder}) is running "
                           "this search; wait for it to finish or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the lock
            self._lock_file = None


# a run whose first trials all fail stops there: a broken evaluator would otherwise spend the
# whole budget (hours of a large model) on errors
ALL_FAILED_STOP = 10

# what every line of trials.jsonl carries
_TRIAL_KEYS = frozenset({"trial", "id", "status", "fitness", "objectives", "seconds"})


class _Loop:
    """Keeps the executor full: asks the controller for candidates while a worker is free,
    answers replayed trials from the log and repeated recipes from the cache, and finishes
    each trial (held-out score for front entrants, log line, tell, checkpoint) as it returns.

    With one worker this is the serial loop (deterministic; a checkpoint every
    `checkpoint_every` trials when nothing is outstanding, resume replays the log). With
    several, a steady-state controller is checkpointed after every trial together with the
    candidates still out, which resume re-issues; CMA-ES checkpoints between generations and
    resume asks the generation again."""

    def __init__(self, run: SearchRun, task: Task, controller: Controller,
                 executor: Executor | None, archive: ParetoArchive,
                 cache: dict[str, dict[str, Any]], state: RunState,
                 progress: Progress | None = None):
        self.run_, self.task, self.controller, self.executor = run, task, controller, executor
        self.archive, self.cache, self.state = archive, cache, state
        self.cfg = run.cfg
        self.primary, direction = task.objectives[0]
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.progress = progress
        self.best_primary: float | None = None  # search split, for the progress line
        self.best_each: dict[str, float] = {}  # every objective's best, for the live view
        self.signs = {name: 1.0 if d == "maximize" else -1.0 for name, d in task.objectives}
        self.done_here = 0
        self.log: Any = None
        self.replay: dict[int, dict[str, Any]] = {}
        self.replayed_lines: dict[int, dict[str, Any]] = {}
        self.replay_capacity = 1
        self.capacity = executor.capacity if executor is not None else 1
        self.outstanding: dict[int, Candidate] = {}  # asked, not finished
        self.queue: list[Job] = []  # decoded, waiting for a worker
        self.ready: list[tuple[Candidate, Result, dict[str, Any] | None]] = []
        self.fields: dict[int, dict[str, Any]] = {}
        self.payloads: dict[int, Any] = {}
        self.scored: dict[int, tuple[Result, dict[str, Any]]] = {}  # awaiting held-out
        fid = run.cfg.fidelity
        self.rungs = list(fid.rungs) if fid else [1.0]
        self.promote = fid.promote if fid else 1.0
        self.window = fid.window if fid else None
        self.rung_values: dict[float, list[float]] = {}  # sign-adjusted primary, per rung
        self.lower_rungs: dict[int, dict[str, dict[str, float]]] = {}  # per candidate
        self.rung_seconds: dict[int, float] = {}
        self.last_checkpoint = state.trials
        self.ok_seen = False  # any successful trial in the run (logged ones included)
        self.errors: Counter[str] = Counter()  # failed trials' errors, for the all-failed rule

    def note_best(self, line: dict[str, Any]) -> None:
        if line.get("status") != "ok" or not _full(line):
            return
        for name, value in (line.get("objectives") or {}).items():
            sign = self.signs.get(name, 1.0)
            if name not in self.best_each or sign * value > sign * self.best_each[name]:
                self.best_each[name] = value
        self.best_primary = self.best_each.get(self.primary, self.best_primary)

    def details(self) -> dict[str, Any]:
        """What the live view shows beyond the counts (computed only when it redraws)."""
        hv = self.archive.history[-1][1] if self.archive.history else None
        return {"best": dict(self.best_each), "front": len(self.archive.front()),
                "hypervolume": hv,
                "workers": self.executor.states() if self.executor is not None else []}

    # --- the steady state -------------------------------------------------------------
    def run(self, stop_after: int | None, outstanding: list[Candidate]) -> None:
        state, budget = self.state, self.cfg.budget
        deadline = time.monotonic() + self.cfg.max_seconds if self.cfg.max_seconds else None
        # asked before the checkpoint, never finished: re-issue (as many as the budget takes)
        for cand in outstanding[: max(0, budget - state.trials)]:
            self._dispatch(cand)
        while state.trials < budget:
            if stop_after is not None and self.done_here >= stop_after:
                break
            stopping = deadline is not None and time.monotonic() > deadline and not self.replay
            if stopping and not self.outstanding:
                break
            if not stopping:
                self._fill()
            self._submit()
            if self.ready:
                cand, res, fields = self.ready.pop(0)
                self._finish(cand, res, fields)
                continue
            if self.executor is None or not self.executor.running():
                if self.queue and self.executor is not None:
                    self.executor.wait()  # jobs but no worker to take them: it says why
                if self.replay:
                    raise RunError(
                        f"{self.run_.trials_path}: the controller no longer proposes the "
                        f"logged trials (next logged id {min(self.replay)}, outstanding "
                        f"{sorted(self.outstanding)}); the run cannot be continued exactly")
                if stopping:
                    break
                raise RunError("the controller proposed nothing while no evaluation was "
                               "running (a controller bug); the run is resumable")
            job, out = self.executor.wait()
            self._returned(job, out)

    def _fill(self) -> None:
        """Ask while a worker would be idle (and never past the budget)."""
        limit = self.replay_capacity if self.replay else self.capacity
        while len(self.outstanding) < limit:
            room = self.cfg.budget - self.state.trials - len(self.outstanding)
            if room <= 0:
                return
            t0 = time.perf_counter()
            cands = self.controller.ask()[:room]
            self.state.timing.controller += time.perf_counter() - t0
            if not cands:
                return
            if self.replay and not any(c.id in self.replay for c in cands):
                raise RunError(
                    f"{self.run_.trials_path}: the controller no longer proposes the logged "
                    f"trials (next logged id {min(self.replay)}, asked "
                    f"{[c.id for c in cands]}); the run cannot be continued exactly")
            for cand in cands:
                self._dispatch(cand)

    def _dispatch(self, cand: Candidate) -> None:
        """A candidate answered from the log or the cache is ready now; the rest queue."""
        self.outstanding[cand.id] = cand
        line = self.replay.pop(cand.id, None)
        if line is not None:
            if not _same_genome(line, cand.genome):
                raise RunError(
                    f"{self.run_.trials_path}: trial {line['trial']} (id {cand.id}) was logged "
                    "for another genome than the controller proposes now; the run cannot be "
                    "continued exactly")
            self.replayed_lines[cand.id] = line
            self.ready.append((cand, _result_from_line(line), None))
            return
        t0 = time.perf_counter()
        try:
            payload = self.task.decode(cand.genome)
            key = self.task.cache_key(payload)
            fields = {**self.task.log_fields(cand.genome, payload),
                      **({"cache_key": key} if key else {})}
        except Exception as exc:  # a genome that does not decode is a failed trial
            self.ready.append((cand, Result(cand.id, -np.inf, status="failed",
                                            error=f"{type(exc).__name__}: {exc}"), {}))
            return
        self.state.timing.controller += time.perf_counter() - t0
        hit = self.cache.get(key) if key else None
        if hit is not None:  # the same recipe again: its result, at no cost
            res = _result_from_line(hit)
            res.candidate_id, res.seconds = cand.id, 0.0
            self.ready.append((cand, res, {**fields, "cached": hit["trial"]}))
            return
        self.fields[cand.id], self.payloads[cand.id] = fields, payload
        self.queue.append(Job(cand.id, payload, fraction=self.rungs[0]))

    def _submit(self) -> None:
        while self.queue and self.executor is not None and \
                self.executor.running() < self.executor.capacity:
            self.executor.submit(self.queue.pop(0))

    def _returned(self, job: Job, out: Outcome) -> None:
        cand = self.outstanding[job.candidate_id]
        self.state.timing.evaluation += out.seconds
        if job.split == "heldout":
            res, fields = self.scored.pop(cand.id)
            res.seconds += out.seconds
            if out.status == "ok":
                res.heldout = out.objectives
            else:
                fields["heldout_error"] = out.error
            self._finish(cand, res, fields)
            return
        res = self._result(cand, out)
        res.seconds += self.rung_seconds.pop(cand.id, 0.0)
        if job.fraction < 1:
            # a controller's initial members always go on: they seed its archive (M2N2
            # has nothing to breed from until they are scored in full)
            seed = bool(cand.info.get("initial"))
            if res.status == "ok" and (self._promoted(job.fraction, res.objectives) or seed):
                self.lower_rungs.setdefault(cand.id, {})[repr(job.fraction)] = res.objectives
                self.rung_seconds[cand.id] = res.seconds
                nxt = self.rungs[self.rungs.index(job.fraction) + 1]
                self.queue.insert(0, Job(cand.id, self.payloads[cand.id], fraction=nxt))
                return
            res.scores, res.fidelity = None, job.fraction  # M2N2's archive: full rows only
        fields = {**self.fields.pop(cand.id), **out.extra}
        if len(self.rungs) > 1:
            fields["fidelity"] = job.fraction
            fields["rungs"] = self.lower_rungs.pop(cand.id, {})
        if res.fidelity < 1:
            self._finish(cand, res, fields)
            return
        if res.status == "ok" and not self.archive.dominated(res.objectives):
            # a front entrant is also scored on the held-out split (the front is what the
            # user takes home); the trial finishes when that score is back
            self.scored[cand.id] = (res, fields)
            self.queue.insert(0, Job(cand.id, self.payloads[cand.id], "heldout"))
            return
        self._finish(cand, res, fields)

    def _promoted(self, fraction: float, objectives: dict[str, float]) -> bool:
        """Asynchronous successive halving: on to the next rung if in the best `promote`
        share of the last `window` results at this rung (the first one always is)."""
        value = self.sign * objectives[self.primary]
        seen = self.rung_values.setdefault(fraction, [])
        recent = seen[-(self.window - 1):] if self.window and self.window > 1 else \
            ([] if self.window == 1 else seen)
        better = sum(1 for v in recent if v > value)
        seen.append(value)
        return better < max(1, int((len(recent) + 1) * self.promote))

    def note_rungs(self, line: dict[str, Any]) -> None:
        """Rung statistics from a logged trial (on resume and replay): the rungs it passed
        count whatever became of it later."""
        for f, objectives in (line.get("rungs") or {}).items():
            self.rung_values.setdefault(float(f), []).append(
                self.sign * objectives[self.primary])
        if line["status"] == "ok" and line.get("fidelity", 1.0) < 1:
            self.rung_values.setdefault(line["fidelity"], []).append(
                self.sign * line["objectives"][self.primary])

    def _result(self, cand: Candidate, out: Outcome) -> Result:
        if out.status != "ok":
            return Result(cand.id, -np.inf, status="failed", seconds=out.seconds,
                          error=out.error)
        scores = as_logged(out.scores) if out.scores is not None else None
        return Result(cand.id, self.sign * out.objectives[self.primary], out.objectives,
                      scores, seconds=out.seconds)

    def _finish(self, cand: Candidate, res: Result, fields: dict[str, Any] | None) -> None:
        """Log the trial (fields None: replayed, already logged), tell the controller, count
        it, checkpoint when due."""
        state = self.state
        self.outstanding.pop(cand.id, None)
        self.payloads.pop(cand.id, None)
        # a replayed trial keeps its logged number (with several workers trials finish out of
        # the order they are asked, which is the order they replay in)
        replayed = self.replayed_lines.pop(cand.id) if fields is None else None
        number = replayed["trial"] if replayed is not None else state.trials
        if replayed is not None and len(self.rungs) > 1:  # its rungs count as they did
            self.note_rungs(replayed)
        if res.status == "ok" and res.fidelity >= 1:
            self.archive.add(number, res.objectives)
        if fields is not None:
            t1 = time.perf_counter()
            line = _line(state.trials, cand, res, fields)
            self.log.write(json.dumps(line) + "\n")
            state.timing.logging += time.perf_counter() - t1
            self.done_here += 1
            key = fields.get("cache_key")
            if key and res.status == "ok" and "cached" not in fields and res.fidelity >= 1:
                self.cache.setdefault(key, line)
        if res.heldout is not None and (
                state.best is None
                or self.sign * res.objectives[self.primary]
                > self.sign * state.best["objectives"][self.primary]):
            state.best = {"trial": number, "objectives": res.objectives,
                          "heldout": res.heldout}
            state.best_genome = cand.genome
        state.trials += 1
        t0 = time.perf_counter()
        self.controller.tell([(cand, res)])
        state.timing.controller += time.perf_counter() - t0
        if fields is not None:
            self.note_best({"status": res.status, "objectives": res.objectives,
                            "fidelity": res.fidelity})
            if self.progress is not None:
                self.progress.update(state.trials, self.best_primary, self.details)
        self._maybe_checkpoint()
        self.note_status(res.status, res.error)
        if not self.ok_seen and self.done_here and \
                state.trials >= min(ALL_FAILED_STOP, self.cfg.budget):
            raise RunError(self._all_failed_message())

    def note_status(self, status: str, error: str | None) -> None:
        """Count a trial's outcome toward the all-failed rule (logged trials too)."""
        if status == "ok":
            self.ok_seen = True
        else:
            self.errors[str(error or "unknown error")] += 1

    def _all_failed_message(self) -> str:
        trials, budget = self.state.trials, self.cfg.budget
        error, count = self.errors.most_common(1)[0]
        more = f"evomerge resume {self.run_.dir}" if trials < budget else \
            f"evomerge resume {self.run_.dir} --budget {budget + trials} (or a new --run-dir)"
        return (f"the first {trials} trials all failed, so the evaluation itself is probably "
                f"broken; the commonest error ({count} of {trials}): {error}\n"
                f"fix it, then continue with: {more}")

    def _maybe_checkpoint(self) -> None:
        state = self.state
        every_trial = self.capacity > 1 and self.controller.outstanding_resumes
        if (self.outstanding or not self.controller.at_boundary()) and not every_trial:
            return  # CMA-ES mid-generation (or a serial run between asks): not a boundary
        if not (every_trial or state.trials - self.last_checkpoint >= self.cfg.checkpoint_every
                or state.trials >= self.cfg.budget):
            return
        self.log.flush()
        os.fsync(self.log.fileno())
        out = list(self.outstanding.values()) if self.controller.outstanding_resumes else []
        # the capacity the trials since the last checkpoint were asked under
        capacity = self.replay_capacity if self.replay else self.capacity
        self.run_._checkpoint(self.controller, state, out, capacity)
        self.last_checkpoint = state.trials


def _line(trial: int, cand: Candidate, res: Result, fields: dict[str, Any]
          ) -> dict[str, Any]:
    line: dict[str, Any] = {"trial": trial, "id": cand.id, "status": res.status,
                            "fitness": res.fitness if np.isfinite(res.fitness) else None,
                            "objectives": res.objectives, "seconds": round(res.seconds, 6)}
    if res.scores is not None:
        line["scores"] = encode_scores(res.scores)
    line.update(fields)
    if res.heldout is not None:
        line["heldout"] = res.heldout
    if res.error:
        line["error"] = res.error
    return line


def _same_genome(line: dict[str, Any], genome: np.ndarray) -> bool:
    """A replayed line belongs to this genome (lines keep the genome or its digest)."""
    if "genome" in line:
        return np.array_equal(np.asarray(line["genome"], dtype=np.float64),
                              np.asarray(genome, dtype=np.float64))
    if "genome_digest" in line:
        return line["genome_digest"] == genome_digest(genome)
    return True


def _full(line: dict[str, Any]) -> bool:
    """Scored on the whole search split (multi-fidelity runs also log lower rungs)."""
    return line.get("fidelity", 1.0) >= 1


def _result_from_line(line: dict[str, Any]) -> Result:
    fitness = line["fitness"] if line["fitness"] is not None else -np.inf
    scores = decode_scores(line["scores"]) if "scores" in line else None
    return Result(line["id"], fitness, line["objectives"], scores, line["status"],
                  line.get("heldout"), line["seconds"], line.get("error"),
                  line.get("fidelity", 1.0))


def report(run_dir: str | Path) -> dict[str, Any]:
    """What a person (or a script) wants to know about a run: the front is rebuilt from the
    trial log, so the report is right even for a run that was killed."""
    run = SearchRun.open(run_dir)
    lines = run.read_log()  # never repairs: a search may be writing it right now
    saved = run.read_state()  # never the checkpoint: a controller's state can be gigabytes
    run.check_log(len(lines), saved["trials"] if saved else None)
    objectives, reference = task_objectives(run.cfg)
    archive = ParetoArchive([Objective(n, d) for n, d in objectives], reference)
    by_trial = {}
    for line in lines:
        if line["status"] == "ok" and _full(line):
            archive.add(line["trial"], line["objectives"])
            by_trial[line["trial"]] = line
    front = [{"trial": e.trial_id, "objectives": e.values,
              "heldout": by_trial[e.trial_id].get("heldout")} for e in archive.front()]
    timing = Timing(**saved["timing"]) if saved else Timing()
    summaries = _recipe_summaries(run, [by_trial[e["trial"]] for e in front])
    for entry in front:
        entry["recipe"] = summaries.get(entry["trial"])
    n = max(len(lines), 1)
    return {
        "run_dir": str(run.dir),
        "name": run.cfg.name,
        "controller": run.cfg.controller.kind,
        "trials": len(lines),
        "budget": run.cfg.budget,
        "failed": sum(1 for x in lines if x["status"] != "ok"),
        "errors": _common_errors(lines),
        "workers": _worker_use(lines),
        "task": run.cfg.task.kind,
        "cache_hits": sum(1 for x in lines if "cached" in x),
        "low_fidelity": sum(1 for x in lines if not _full(x)),
        "best": front[0] if front else None,
        "front": front,
        "hypervolume": {"reference_point": archive.reference_point,
                        "value": archive.history[-1][1] if archive.history else None},
        "plots": [str(p) for p in sorted((run.dir / "plots").glob("*.png"))],
        "best_export": str(run.dir / "best") if (run.dir / "best" / "config.json").exists()
        else None,
        "seconds": {"evaluation": sum(x["seconds"] for x in lines), "wall": timing.wall,
                    "controller_per_trial": timing.controller / n,
                    "logging_per_trial": timing.logging / n},
    }


def _recipe_summaries(run: SearchRun, lines: list[dict[str, Any]]) -> dict[int, str]:
    """A short description of each front member's recipe (merge runs; {} otherwise)."""
    if run.cfg.task.kind != "merge" or not lines:
        return {}
    import numpy as np

    try:
        task = build_task(run.cfg, str(run.dir / "config.yaml"), prepare=False)
        return {x["trial"]: task.decode(np.asarray(x["genome"])).summary() for x in lines
                if "genome" in x}
    except (ConfigError, ValueError, OSError):
        return {}  # the sources moved: the table still has the scores


def _worker_use(lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Busy time over wall time across the workers (trials run on Ray carry `worker` and
    `started`); None for a run evaluated inline."""
    timed = [x for x in lines if "worker" in x and "started" in x]
    if not timed:
        return None
    workers = sorted({x["worker"] for x in timed})
    span = max(x["started"] + x["seconds"] for x in timed) - min(x["started"] for x in timed)
    busy = sum(x["seconds"] for x in timed)
    return {"count": len(workers), "nodes": len({x.get("node") for x in timed}),
            "utilisation": busy / (len(workers) * span) if span > 0 else None,
            "trials": {str(w): sum(1 for x in timed if x["worker"] == w) for w in workers}}


def _common_errors(lines: list[dict[str, Any]], limit: int = 3) -> list[dict[str, Any]]:
    """The most frequent failure messages, with counts and the first trial of each."""
    seen: dict[str, dict[str, Any]] = {}
    for x in lines:
        if x["status"] != "ok":
            err = str(x.get("error") or "unknown error")
            entry = seen.setdefault(err, {"error": err, "count": 0, "first_trial": x["trial"]})
            entry["count"] += 1
    return sorted(seen.values(), key=lambda e: -e["count"])[:limit]


__all__ = ["ConfigError", "RunError", "SearchRun", "report"]
