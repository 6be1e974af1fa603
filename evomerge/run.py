"""The search loop and its run directory (DESIGN §7).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.archive import Objective, ParetoArchive
from evomerge.atomic import write_bytes_atomic, write_text_atomic
from evomerge.progress import Progress
from evomerge.search.protocol import Candidate, Controller, Result
from evomerge.search_config import HIGH_DIMENSION, ConfigError, SearchConfig, load_config
from evomerge.tasks.base import ControllerSetup, Task, build_task, task_objectives
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
                     setup: ControllerSetup, origin: str = "<config>") -> Controller:
    """The controller the config names, after the checks that keep a default from costing
    hours or gigabytes (`check_dimension`)."""
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
        # collapses the step size on accuracy plateaus (DESIGN §5)
        step = "csa" if c.separable == "auto" and separable and c.step_size == "auto" \
            else c.step_size
        settings = CMAESSettings(sigma0=c.sigma0 or 1 / 6, popsize=c.popsize,
                                 separable=separable, restarts=c.restarts, step_size=step)
        return CMAES(x0, setup.lower, setup.upper, cfg.budget, settings, seed=cfg.seed)
    if c.kind == "random":
        from evomerge.search.random_search import RandomSearch

        return RandomSearch(x0, setup.lower, setup.upper, sigma=c.sigma, seed=cfg.seed)
    from evomerge.search.optuna_search import OptunaSearch

    if setup.lower is not None and setup.upper is not None:
        lo, hi = setup.lower, setup.upper
    else:
        lo, hi = x0 - 3 * c.sigma, x0 + 3 * c.sigma
    return OptunaSearch(lo, hi, objectives, c.sampler, cfg.seed, x0)


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
                f"costs more than the last and the checkpoint grows by ~{n * 50 / 2**20:.1f} "
                "MiB per trial; use cmaes (separable at this size) or m2n2, or set "
                "controller.allow_high_dimension: true to run it anyway")
        log.warning("controller: Optuna on %d genes; the checkpoint grows by ~%.1f MiB per "
                    "trial", n, n * 50 / 2**20)
    return bool(separable)


# --- the run -------------------------------------------------------------------------------
@dataclass
class Timing:
    controller: float = 0.0
    evaluation: float = 0.0
    logging: float = 0.0


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
        self.state: RunState | None = None  # set once the run has started

    # --- opening -----------------------------------------------------------------------
    @classmethod
    def create(cls, config_path: str | Path, run_dir: str | Path, budget: int | None = None,
               seed: int | None = None) -> SearchRun:
        cfg = load_config(config_path, {"budget": budget, "seed": seed})
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise RunError(f"--run-dir: {run_dir} exists and is not a directory")
        if (run_dir / "config.yaml").exists():
            existing = load_config(run_dir / "config.yaml", frozen=True)
            if existing.digest() != cfg.digest():
                raise RunError(
                    f"{run_dir}: holds a run of a different config; use `evomerge resume "
                    f"{run_dir}` or another --run-dir")
            return cls.open(run_dir, budget=cfg.budget)
        # Build (and so validate) the task first: a bad source, file or objective fails here,
        # naming the config file and field, and leaves no run directory.
        task = build_task(cfg, str(config_path))
        return cls(run_dir, cfg, task, write_config=True, origin=str(config_path))

    @classmethod
    def open(cls, run_dir: str | Path, budget: int | None = None) -> SearchRun:
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").exists():
            raise RunError(f"{run_dir}: not a run directory (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml", frozen=True)
        run = cls(run_dir, cfg)
        if budget is not None:
            if budget < cfg.budget:
                raise RunError(f"--budget: {budget} is below the run's budget {cfg.budget}")
            if budget != cfg.budget:  # frozen once the run is able to continue
                run.cfg = cfg.model_copy(update={"budget": budget})
                run._write_config = True
        return run

    # --- log and checkpoint --------------------------------------------------------------
    def read_log(self) -> list[dict[str, Any]]:
        """Trial lines; a torn last line (killed mid-write) is cut off the file. Any other
        line that is not a trial record is an error naming its line number."""
        if not self.trials_path.exists():
            return []
        raw = self.trials_path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end != len(raw):
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

    def _checkpoint(self, controller: Controller, state: RunState) -> None:
        blob = pickle.dumps({
            "trials": state.trials,
            "config_digest": self.cfg.digest(),
            "controller": controller.state_dict(),
            "best": state.best,
            "best_genome": state.best_genome,
            "timing": state.timing,
        })
        write_bytes_atomic(self.ckpt_path, blob)
        write_text_atomic(self.state_path, json.dumps({
            "trials": state.trials, "checkpoint_bytes": len(blob),
            "timing": {"controller": state.timing.controller,
                       "evaluation": state.timing.evaluation,
                       "logging": state.timing.logging}}) + "\n")

    # --- the loop ----------------------------------------------------------------------
    def run(self, stop_after: int | None = None, progress: Progress | None = None,
            executor: Executor | None = None) -> RunState:
        """Run to the budget (or `stop_after` more trials); returns the final state."""
        task = self.task or build_task(self.cfg, self.origin)
        self.task = task
        setup = task.controller_setup(self.cfg.controller.kind, self.cfg.controller.archive_size)
        controller = build_controller(self.cfg, task.objectives, setup, self.origin)
        state = RunState()
        ckpt = self._load_checkpoint()
        if ckpt is not None:
            if ckpt["config_digest"] != self.cfg.digest():
                raise RunError(
                    f"{self.dir / 'config.yaml'}: changed since the run started (only budget "
                    "and max_seconds may change on resume); restore it or start a new run")
            controller.load_state_dict(ckpt["controller"])
            state = RunState(ckpt["trials"], ckpt["best"], ckpt["best_genome"], ckpt["timing"])
        if hasattr(controller, "budget"):
            controller.budget = self.cfg.budget
        logged = self.read_log()
        self.check_log(len(logged), state.trials if ckpt is not None else None)
        if executor is None and state.trials < self.cfg.budget:
            from evomerge.workers.inline import InlineExecutor

            executor = InlineExecutor(task)  # a worker that cannot start fails here, not later
        if self._write_config:  # able to run: now the config (or new budget) is frozen
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.dir / "config.yaml", self.cfg.to_yaml())
            self._write_config = False
        self.state = state
        replay = {line["id"]: line for line in logged[state.trials:]}
        archive = task.archive()
        cache: dict[str, dict[str, Any]] = {}
        for line in logged:
            if line["status"] == "ok" and "cache_key" in line:
                cache.setdefault(line["cache_key"], line)
        for line in logged[: state.trials]:
            if line["status"] == "ok":
                archive.add(line["trial"], line["objectives"])
        primary, direction = task.objectives[0]
        sign = 1.0 if direction == "maximize" else -1.0
        deadline = time.monotonic() + self.cfg.max_seconds if self.cfg.max_seconds else None
        loop = _Loop(self, task, executor, archive, cache, state, sign, primary, progress)
        for line in logged:
            loop.note_best(line)
        if progress is not None:
            progress.start(state.trials, self.cfg.budget, primary)
        try:
            with open(self.trials_path, "a", buffering=1) as log_file:
                loop.log = log_file
                while state.trials < self.cfg.budget:
                    if stop_after is not None and loop.done_here >= stop_after:
                        break
                    if deadline is not None and time.monotonic() > deadline and not replay:
                        break
                    t0 = time.perf_counter()
                    cands = controller.ask()
                    state.timing.controller += time.perf_counter() - t0
                    cands = cands[: self.cfg.budget - state.trials]
                    if replay and not any(c.id in replay for c in cands):
                        raise RunError(
                            f"{self.trials_path}: the controller no longer proposes the logged "
                            f"trials (next logged id {min(replay)}, asked "
                            f"{[c.id for c in cands]}); the run cannot be continued exactly")
                    told = loop.generation(cands, replay)
                    t0 = time.perf_counter()
                    controller.tell(told)
                    state.timing.controller += time.perf_counter() - t0
                    if state.trials % self.cfg.checkpoint_every < len(told) or \
                            state.trials >= self.cfg.budget:
                        log_file.flush()
                        os.fsync(log_file.fileno())
                        self._checkpoint(controller, state)
        finally:
            if progress is not None:
                progress.close()
            if executor is not None:
                executor.close()
        return state


# what every line of trials.jsonl carries
_TRIAL_KEYS = frozenset({"trial", "id", "status", "fitness", "objectives", "seconds"})


class _Loop:
    """One generation at a time: replayed trials come from the log, repeated recipes from the
    cache, the rest from the executor; each finished trial is logged as it arrives."""

    def __init__(self, run: SearchRun, task: Task, executor: Executor | None,
                 archive: ParetoArchive, cache: dict[str, dict[str, Any]], state: RunState,
                 sign: float, primary: str, progress: Progress | None = None):
        self.run, self.task, self.executor = run, task, executor
        self.archive, self.cache, self.state = archive, cache, state
        self.sign, self.primary = sign, primary
        self.progress = progress
        self.best_primary: float | None = None  # search split, for the progress line
        self.done_here = 0
        self.log: Any = None

    def note_best(self, line: dict[str, Any]) -> None:
        value = (line.get("objectives") or {}).get(self.primary)
        if line.get("status") == "ok" and value is not None and (
                self.best_primary is None or self.sign * value > self.sign * self.best_primary):
            self.best_primary = value

    def generation(self, cands: list[Candidate], replay: dict[int, dict[str, Any]]
                   ) -> list[tuple[Candidate, Result]]:
        told: dict[int, tuple[Candidate, Result]] = {}
        jobs: list[Job] = []
        fields: dict[int, dict[str, Any]] = {}
        by_id = {c.id: c for c in cands}
        for cand in cands:
            line = replay.pop(cand.id, None)
            if line is not None:
                res = _result_from_line(line)
                if res.status == "ok":
                    self.archive.add(self.state.trials, res.objectives)
                self._finish(cand, res, None)
                told[cand.id] = (cand, res)
                continue
            t0 = time.perf_counter()
            try:
                payload = self.task.decode(cand.genome)
                key = self.task.cache_key(payload)
                fields[cand.id] = {**self.task.log_fields(cand.genome, payload),
                                   **({"cache_key": key} if key else {})}
            except Exception as exc:  # a genome that does not decode is a failed trial
                res = Result(cand.id, -np.inf, status="failed",
                             error=f"{type(exc).__name__}: {exc}")
                self._finish(cand, res, {})
                told[cand.id] = (cand, res)
                continue
            self.state.timing.controller += time.perf_counter() - t0
            hit = self.cache.get(key) if key else None
            if hit is not None:  # the same recipe again: its result, at no cost
                res = _result_from_line(hit)
                res.candidate_id, res.seconds = cand.id, 0.0
                self.archive.add(self.state.trials, res.objectives)
                self._finish(cand, res, {**fields[cand.id], "cached": hit["trial"]})
                told[cand.id] = (cand, res)
                continue
            jobs.append(Job(cand.id, payload))
        if jobs:
            assert self.executor is not None
            payloads = {j.candidate_id: j.payload for j in jobs}
            for job, out in self.executor.run(jobs):
                cand = by_id[job.candidate_id]
                res = self._result(cand, out)
                self.state.timing.evaluation += out.seconds
                line_fields = {**fields[cand.id], **out.extra}
                if res.status == "ok" and self.archive.add(self.state.trials, res.objectives):
                    # a front entrant is also scored on the held-out split: the front is what
                    # the user takes home
                    _, held = next(iter(self.executor.run(
                        [Job(cand.id, payloads[cand.id], "heldout")])))
                    self.state.timing.evaluation += held.seconds
                    res.seconds += held.seconds
                    if held.status == "ok":
                        res.heldout = held.objectives
                    else:
                        line_fields["heldout_error"] = held.error
                line = self._finish(cand, res, line_fields)
                told[cand.id] = (cand, res)
                key = line_fields.get("cache_key")
                if key and res.status == "ok":
                    self.cache.setdefault(key, line)
        return [told[c.id] for c in cands if c.id in told]

    def _result(self, cand: Candidate, out: Outcome) -> Result:
        if out.status != "ok":
            return Result(cand.id, -np.inf, status="failed", seconds=out.seconds,
                          error=out.error)
        scores = as_logged(out.scores) if out.scores is not None else None
        return Result(cand.id, self.sign * out.objectives[self.primary], out.objectives,
                      scores, seconds=out.seconds)

    def _finish(self, cand: Candidate, res: Result, fields: dict[str, Any] | None
                ) -> dict[str, Any] | None:
        """Log a finished trial (fields None: replayed, already logged) and count it;
        returns the line written."""
        state = self.state
        line = None
        if fields is not None:
            t1 = time.perf_counter()
            line = _line(state.trials, cand, res, fields)
            self.log.write(json.dumps(line) + "\n")
            state.timing.logging += time.perf_counter() - t1
            self.done_here += 1
        if res.heldout is not None and (
                state.best is None
                or self.sign * res.objectives[self.primary]
                > self.sign * state.best["objectives"][self.primary]):
            state.best = {"trial": state.trials, "objectives": res.objectives,
                          "heldout": res.heldout}
            state.best_genome = cand.genome
        state.trials += 1
        if fields is not None:
            self.note_best({"status": res.status, "objectives": res.objectives})
            if self.progress is not None:
                self.progress.update(state.trials, self.best_primary)
        return line


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


def _result_from_line(line: dict[str, Any]) -> Result:
    fitness = line["fitness"] if line["fitness"] is not None else -np.inf
    scores = decode_scores(line["scores"]) if "scores" in line else None
    return Result(line["id"], fitness, line["objectives"], scores, line["status"],
                  line.get("heldout"), line["seconds"], line.get("error"))


def report(run_dir: str | Path) -> dict[str, Any]:
    """What a person (or a script) wants to know about a run: the front is rebuilt from the
    trial log, so the report is right even for a run that was killed."""
    run = SearchRun.open(run_dir)
    lines = run.read_log()
    saved = run.read_state()  # never the checkpoint: a controller's state can be gigabytes
    run.check_log(len(lines), saved["trials"] if saved else None)
    objectives, reference = task_objectives(run.cfg)
    archive = ParetoArchive([Objective(n, d) for n, d in objectives], reference)
    by_trial = {}
    for line in lines:
        if line["status"] == "ok":
            archive.add(line["trial"], line["objectives"])
            by_trial[line["trial"]] = line
    front = [{"trial": e.trial_id, "objectives": e.values,
              "heldout": by_trial[e.trial_id].get("heldout")} for e in archive.front()]
    timing = Timing(**saved["timing"]) if saved else Timing()
    n = max(len(lines), 1)
    return {
        "run_dir": str(run.dir),
        "name": run.cfg.name,
        "controller": run.cfg.controller.kind,
        "trials": len(lines),
        "budget": run.cfg.budget,
        "failed": sum(1 for x in lines if x["status"] != "ok"),
        "cache_hits": sum(1 for x in lines if "cached" in x),
        "best": front[0] if front else None,
        "front": front,
        "hypervolume": {"reference_point": archive.reference_point,
                        "value": archive.history[-1][1] if archive.history else None},
        "seconds": {"evaluation": sum(x["seconds"] for x in lines),
                    "controller_per_trial": timing.controller / n,
                    "logging_per_trial": timing.logging / n},
    }


__all__ = ["ConfigError", "RunError", "SearchRun", "report"]
