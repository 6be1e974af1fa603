"""A search run (docs/design.md §7): creates or reopens a run directory, builds the task,
controller and executor from its frozen config, restores the checkpoint, replays the log and
drives the scheduling loop to the budget; when the budget is spent, draws the plots and
exports the best trial if asked.

Resume loads the checkpoint, asks the controller again (it proposes exactly what it proposed
before) and answers from the log whatever was already evaluated, so a killed run loses at
most the evaluations in flight and an inline serial run continues with the same trials.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.atomic import write_text_atomic
from evomerge.errors import ConfigError
from evomerge.executors.base import Executor
from evomerge.executors.registry import make_executor
from evomerge.export import best_recipe_texts, export_into_run
from evomerge.plots import write_plots
from evomerge.progress import Progress
from evomerge.run.directory import RunDirectory
from evomerge.run.errors import RunError
from evomerge.run.loop import RunState, SchedulingLoop, Timing
from evomerge.run.report import report
from evomerge.run.trial_log import archive_from_lines, is_full, result_from_line
from evomerge.search.protocol import Candidate, Controller, ControllerSetup, SearchContext
from evomerge.search.registry import CONTROLLER_KEYS
from evomerge.search_config import SearchConfig, build_zoo, load_config
from evomerge.tasks.base import Task
from evomerge.tasks.registry import build_task, task_objectives
from evomerge.tracking.registry import make_trackers


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
        if e.kind != "simulated":
            e.kind = "ray" if workers > 1 else "inline"
    if address is not None:
        e.kind, e.address = "ray", address
    return cfg.model_copy(update={"executor": e})


def seeded_setup(setup: ControllerSetup, baselines: list[dict[str, Any]],
                 primary: tuple[str, str]) -> ControllerSetup:
    """The controller starts from the scored baselines its space can express (docs/design.md
    §7.5): x0 (CMA-ES's mean, random search's centre) at the best on the search split, and
    all of them, best first, as `starts` (M2N2's first members, Optuna's first trials)."""
    name, direction = primary
    sign = 1.0 if direction == "maximize" else -1.0
    ok = [line for line in baselines if line["status"] == "ok" and line.get("genome")
          and is_full(line)]
    if not ok:
        return setup
    ok.sort(key=lambda line: (-sign * line["objectives"][name], line["trial"]))
    starts = [np.asarray(line["genome"], dtype=np.float64) for line in ok]
    return dataclasses.replace(setup, x0=starts[0], starts=starts,
                               start_results=[result_from_line(line) for line in ok])


def timing_from(saved: Any) -> Timing:
    """A checkpoint's timing: a plain dict, or the dataclass older checkpoints pickled."""
    if isinstance(saved, dict):
        return Timing(**saved)
    return Timing(**{f.name: getattr(saved, f.name, 0.0) for f in dataclasses.fields(Timing)})


class SearchRun:
    """One search over one run directory: create it, resume it, run it to its budget.

    Nothing is written until the run is able to start: the task built, the controller built
    and checked, the checkpoint loaded and the log checked against it. Only then is the
    config (or a resume's new budget) frozen into `config.yaml`."""

    def __init__(self, run_dir: Path, cfg: SearchConfig, task: Task | None = None,
                 write_config: bool = False, origin: str | None = None):
        self.files = RunDirectory(run_dir)
        self.dir = self.files.path
        self.origin = origin or str(self.files.config_path)  # the file errors name
        self.cfg = cfg
        self.task = task
        self.pending_config = write_config  # config.yaml is (re)written once able to run
        self.state: RunState | None = None  # set once the run has started
        self.outputs: list[Path] = []  # written when the budget is spent
        self._session: tuple[float, float] | None = None  # (monotonic start, wall before)

    # --- opening -----------------------------------------------------------------------
    @classmethod
    def create(cls, config_path: str | Path, run_dir: str | Path, budget: int | None = None,
               seed: int | None = None, workers: int | None = None,
               address: str | None = None) -> SearchRun:
        """A new run of the config in `run_dir`, or the run already there when it is the
        same config (only --budget may differ)."""
        build_zoo(config_path)  # the example sources it names, before their paths are checked
        cfg = with_executor(load_config(config_path, {"budget": budget, "seed": seed}),
                            workers, address)
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise RunError(f"--run-dir: {run_dir} exists and is not a directory")
        files = RunDirectory(run_dir)
        if files.config_path.exists():
            existing = files.read_config()
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
        """The run in `run_dir`, to continue (a new --budget is frozen once it can run)."""
        files = RunDirectory.existing(run_dir)
        cfg = with_executor(files.read_config(), workers, address)
        run = cls(files.path, cfg)
        # a lower budget is checked against the log where the run reads it (`_run`)
        if budget is not None and budget != cfg.budget:
            run.cfg = cfg.model_copy(update={"budget": budget})
            run.pending_config = True
        return run

    # --- checkpoints -------------------------------------------------------------------
    def _checkpoint(self, controller: Controller, state: RunState,
                    outstanding: list[Candidate], capacity: int) -> None:
        """The controller's state, the candidates it no longer holds but that never finished
        (re-issued on resume) and the capacity they were asked under."""
        self._wall(state)
        timing = dataclasses.asdict(state.timing)
        self.files.write_checkpoint({
            "trials": state.trials,
            "config_digest": self.cfg.digest(),
            "controller": controller.state_dict(),
            "outstanding": outstanding,
            "capacity": capacity,
            "best": state.best,
            "best_genome": state.best_genome,
            "timing": timing,
        }, {"timing": timing})

    def _wall(self, state: RunState) -> float:
        """Running time over every session (this one counted from its start)."""
        if self._session is not None:
            start, before = self._session
            state.timing.wall = before + time.monotonic() - start
        return state.timing.wall

    # --- running -----------------------------------------------------------------------
    def run(self, stop_after: int | None = None, progress: Progress | None = None,
            executor: Executor | None = None) -> RunState:
        """Run to the budget (or `stop_after` more trials); returns the final state."""
        try:
            return self._run(stop_after, progress, executor)
        finally:
            self.files.unlock()

    def _run(self, stop_after: int | None, progress: Progress | None,
             executor: Executor | None) -> RunState:
        cfg, files = self.cfg, self.files
        task = self.task or build_task(cfg, self.origin)
        self.task = task
        baselines = task.baselines()
        if len(baselines) >= cfg.budget:
            raise ConfigError(
                f"{self.origin}: budget: {cfg.budget} evaluations leave none to the "
                f"controller after the {len(baselines)} baselines (raise the budget, or list "
                "fewer in task.baselines; [] for none)")
        setup = task.controller_setup(cfg.controller.kind, cfg.controller.population)
        # built once here without the run directory, so that a controller that cannot run
        # fails before anything is written; the run's own is seeded by the baselines' scores
        cfg.controller.build(setup, SearchContext(cfg.budget, cfg.seed, task.objectives,
                                                  self.origin, None))
        state = RunState()
        ckpt = files.load_checkpoint()
        if ckpt is not None:
            if ckpt["config_digest"] != cfg.digest():
                raise RunError(
                    f"{files.config_path}: changed since the run started (only budget "
                    "and max_seconds may change on resume); restore it or start a new run")
            state = RunState(ckpt["trials"], ckpt["best"], ckpt["best_genome"],
                             timing_from(ckpt["timing"]))
        self._session = (time.monotonic(), state.timing.wall)
        files.lock()
        logged = files.read_log(repair=True)
        files.check_log(len(logged), state.trials if ckpt is not None else None)
        if len(logged) > cfg.budget:  # only a lowered --budget gets here
            raise RunError(f"--budget: {cfg.budget} is below the {len(logged)} trials "
                           "already done")
        if ckpt is None:  # the baselines come first; the rest replays from the log
            state.trials = sum(1 for line in logged if "baseline" in line)
        trackers = make_trackers(cfg, files.path, _warn, self.origin)  # before any write
        if executor is None and state.trials < cfg.budget:
            # its workers are built now: one that cannot start fails here, before any write
            try:
                executor = make_executor(cfg, task, self.origin)
            except BaseException:
                for t in trackers:
                    t.close(False)
                raise
        try:  # from here every exit (a failing first checkpoint too) closes it
            if self.pending_config:  # able to run: now the config (or new budget) is frozen
                files.path.mkdir(parents=True, exist_ok=True)
                files.lock()
                files.write_config(cfg)
                self.pending_config = False
            self.state = state
            cache: dict[str, dict[str, Any]] = {}
            for line in logged:
                if line["status"] == "ok" and "cache_key" in line and is_full(line):
                    cache.setdefault(line["cache_key"], line)
            objectives, reference = task.objectives, task.reference_point
            archive = archive_from_lines(logged[: state.trials], objectives, reference)
            loop = SchedulingLoop(
                cfg, task, None, executor, archive, cache, state,
                log_name=str(files.trials_path),
                checkpoint=lambda out, cap: self._checkpoint(loop.controller, state, out, cap),
                resume_hint=f"evomerge resume {self.dir}", progress=progress)
            loop.replay = {line["id"]: line for line in logged[state.trials:]
                           if "baseline" not in line}
            loop.trackers = trackers
            for t in trackers:  # the tracked run is opened (or reopened) and its gaps filled
                t.start(logged)
            # the capacity the logged trials were asked under: replaying with another would ask
            # in another order (a run continued with more workers replays as it ran, then widens)
            loop.replay_capacity = (ckpt or {}).get("capacity", 1)
            for line in logged:
                loop.note_best(line)
                loop.note_status(line["status"], line.get("error"))
            for line in logged[: state.trials]:
                loop.note_rungs(line)
                loop.note_full_row(line)  # the anchors as they were at the checkpoint
            if progress is not None:
                # the logged trials are done (those past the checkpoint are replayed, not rerun)
                progress.start(max(state.trials, len(logged)), cfg.budget, loop.primary)
                if executor is not None:  # the view stays live while nothing finishes
                    executor.on_idle = lambda: progress.refresh(loop.details)
            with open(files.trials_path, "a", buffering=1) as log_file:
                loop.log = log_file
                if ckpt is None and executor is not None:
                    done = {line["baseline"] for line in logged if "baseline" in line}
                    loop.run_baselines([(-1 - i, b) for i, b in enumerate(baselines)
                                        if b.name not in done])
                # the baselines scored now are not in `logged`; a resumed run's all are (and
                # its log, 100,000 lines, takes seconds to read again)
                scored = [line for line in (logged if ckpt is not None else files.read_log())
                          if "baseline" in line]
                controller = cfg.controller.build(
                    seeded_setup(setup, scored, task.objectives[0]),
                    SearchContext(cfg.budget, cfg.seed, task.objectives, self.origin,
                                  self.dir, loop.capacity))
                if ckpt is not None:
                    try:
                        controller.load_state_dict(ckpt["controller"])
                    except ValueError as exc:  # a state this installation cannot continue
                        raise RunError(f"{files.checkpoint_path}: {exc}") from None
                if hasattr(controller, "budget"):
                    controller.budget = cfg.budget
                loop.controller = controller
                if ckpt is None and executor is not None:  # resume needs the capacity from
                    self._checkpoint(controller, state, [], loop.capacity)  # trial 0 on
                loop.run(stop_after, (ckpt or {}).get("outstanding", []))
        finally:
            if progress is not None:
                progress.close()
            if executor is not None:
                executor.close()
            if sys.exc_info()[1] is not None or state.trials < cfg.budget:
                for t in trackers:  # stopped or failed: the tracked run is resumable
                    t.close(False)
        if state.trials >= cfg.budget:  # the workers are gone: export has the memory
            try:
                self.outputs = self._complete()
                artifacts = self._artifacts(self.outputs) if trackers else {}
                for t in trackers:
                    t.finish(artifacts)
            finally:
                for t in trackers:
                    t.close(True)
        return state

    def _artifacts(self, outputs: list[Path]) -> dict[str, Path]:
        """What a tracker attaches when the budget is spent: the report, the plots, and the
        best trial's recipe (evomerge YAML, and mergekit YAML where mergekit can say it)."""
        from evomerge.report_view import format_report

        out_dir = self.dir / "tracking"
        out_dir.mkdir(exist_ok=True)
        write_text_atomic(out_dir / "report.txt", format_report(report(self.dir)) + "\n")
        artifacts = {"report.txt": out_dir / "report.txt"}
        for path in outputs:
            if path.suffix == ".png":
                artifacts[f"plots/{path.name}"] = path
        if self.cfg.task.kind == "merge":
            try:
                for name, text in best_recipe_texts(self.files, self.cfg).items():
                    write_text_atomic(out_dir / name, text)
                    artifacts[f"best/{name}"] = out_dir / name
            except RunError as exc:  # no trial in full yet, say: nothing to attach
                _warn(f"tracking: no best recipe to attach ({exc})")
        return artifacts

    def _complete(self) -> list[Path]:
        """When the budget is spent: the plots, and the best trial exported if asked."""
        objectives, reference = task_objectives(self.cfg)
        lines = self.files.read_log()
        written = write_plots(self.dir, lines, objectives,
                              archive_from_lines(lines, objectives, reference))
        if self.cfg.export_best and self.cfg.task.kind == "merge":
            written.append(export_into_run(self.files, self.cfg, self.dir / "best"))
        return written


def _warn(message: str) -> None:
    """A tracker's one-time notice (from its own thread): the search itself goes on."""
    sys.stderr.write(f"evomerge: {message}\n")
    sys.stderr.flush()


__all__ = ["SearchRun", "config_diff", "with_executor"]
