"""The scheduling loop (docs/design.md §7): keeps every worker busy with the controller's
candidates and turns each returned evaluation into a finished trial (held-out score for
front entrants, log line, tell, checkpoint). It knows the run directory only through the
trial log it appends to and the checkpoint callback it is given."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from evomerge.archive import ParetoArchive
from evomerge.executors.base import Executor, Job, Outcome
from evomerge.progress import Progress
from evomerge.run.anchors import AnchorRung
from evomerge.run.errors import RunError
from evomerge.run.rungs import SuccessiveHalving
from evomerge.run.trial_log import (
    as_logged,
    decode_scores,
    encode_scores,
    is_full,
    result_from_line,
    same_genome,
    trial_line,
)
from evomerge.search.protocol import Candidate, Controller, Result
from evomerge.search_config import SearchConfig
from evomerge.tasks.base import Baseline, Task
from evomerge.tracking.base import Tracker

# the trial log is flushed to the OS with every line (a killed process loses no finished
# trial) and fsynced at checkpoints and at least this often (a crashed machine loses at most
# this many seconds of trials), not once per trial: an fsync costs milliseconds
LOG_SYNC_SECONDS = 10.0

# a run whose first trials all fail stops there: a broken evaluator would otherwise spend the
# whole budget (hours of a large model) on errors
ALL_FAILED_STOP = 10


@dataclass
class Timing:
    """Seconds spent by part, summed over every session of the run."""

    controller: float = 0.0
    evaluation: float = 0.0
    logging: float = 0.0
    wall: float = 0.0  # every session's running time, up to its last checkpoint


@dataclass
class RunState:
    """What a checkpoint restores besides the controller: the trial count, the best trial
    (by the primary objective, with its held-out score) and the timings."""

    trials: int = 0
    best: dict[str, Any] | None = None
    best_genome: np.ndarray | None = None
    timing: Timing = field(default_factory=Timing)


# (candidates asked but never finished, the capacity they were asked under) -> checkpoint
Checkpointer = Callable[[list[Candidate], int], None]


class SchedulingLoop:
    """Keeps the executor full: asks the controller for candidates while a worker is free,
    answers replayed trials from the log and repeated recipes from the cache, and finishes
    each trial (held-out score for front entrants, log line, tell, checkpoint) as it returns.

    A checkpoint is taken every `checkpoint_every` trials (docs/design.md §7.2): with one
    worker when nothing is outstanding; with several and a steady-state controller together
    with the candidates still out, which resume re-issues; generational CMA-ES between
    generations, and resume asks the generation again. Resume replays the trials logged
    after the checkpoint in their logged order (`_next_ready`), so the controller is told
    exactly what it was told live, whatever order the workers finished in."""

    def __init__(self, cfg: SearchConfig, task: Task, controller: Controller | None,
                 executor: Executor | None, archive: ParetoArchive,
                 cache: dict[str, dict[str, Any]], state: RunState, log_name: str,
                 checkpoint: Checkpointer, resume_hint: str,
                 progress: Progress | None = None):
        self.cfg, self.task, self.controller, self.executor = cfg, task, controller, executor
        self.archive, self.cache, self.state = archive, cache, state
        self.log_name = log_name  # the trial log's path, for errors
        self.checkpoint = checkpoint
        self.resume_hint = resume_hint  # `evomerge resume <dir>`
        self.primary, direction = task.objectives[0]
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.progress = progress
        self.best_primary: float | None = None  # search split, for the progress line
        self.best_each: dict[str, float] = {}  # every objective's best, for the live view
        self.signs = {name: 1.0 if d == "maximize" else -1.0 for name, d in task.objectives}
        self.done_here = 0
        self.log: IO[str] | None = None
        self.replay: dict[int, dict[str, Any]] = {}
        self.replayed_lines: dict[int, dict[str, Any]] = {}
        self.replay_capacity = 1
        self.capacity = executor.capacity if executor is not None else 1
        self.outstanding: dict[int, Candidate] = {}  # asked, not finished
        self.queue: list[Job] = []  # decoded, waiting for a worker
        # finished, not yet logged and told: answered from the log or the cache, or (while
        # replaying) evaluated afresh and held until every logged trial is told
        self.ready: list[tuple[Candidate, Result, dict[str, Any] | None]] = []
        self.fields: dict[int, dict[str, Any]] = {}
        self.payloads: dict[int, Any] = {}
        self.scored: dict[int, tuple[Result, dict[str, Any]]] = {}  # awaiting held-out
        self.rungs = SuccessiveHalving.from_config(cfg.fidelity)
        anchors = cfg.fidelity.anchors if cfg.fidelity is not None else None
        self.anchors = AnchorRung(anchors, cfg.seed) if anchors is not None else None
        self.lower_rungs: dict[int, dict[str, dict[str, float]]] = {}  # per candidate
        self.rung_seconds: dict[int, float] = {}
        self.last_checkpoint = state.trials
        self.replay_done = False  # the last replayed trial was told: checkpoint at once
        self.last_sync = time.monotonic()
        self.ok_seen = False  # any successful trial in the run (logged ones included)
        self.errors: Counter[str] = Counter()  # failed trials' errors, for the all-failed rule
        # re-scored splits: validation (choosing the best) when the task has one, and the test
        self.rescore_splits = (["validation"] if task.has_validation else []) + ["heldout"]
        self.top: list[float] = []  # the best `rescore_top` full-fidelity values (signed)
        self.baseline_best: dict[str, float] = {}  # for the live view
        self.trackers: list[Tracker] = []  # told each new trial line (never block)

    def note_best(self, line: dict[str, Any]) -> None:
        """Track each objective's best from a trial line (live or logged), for the view and
        the top-k re-scoring rule."""
        if line.get("status") != "ok" or not is_full(line):
            return
        value = self.sign * line["objectives"][self.primary]
        self.top = sorted([*self.top, value], reverse=True)[: self.cfg.rescore_top]
        if line.get("baseline") is not None:
            best = self.baseline_best.get(self.primary)
            if best is None or value > self.sign * best:
                self.baseline_best = dict(line["objectives"])
        for name, value in (line.get("objectives") or {}).items():
            sign = self.signs.get(name, 1.0)
            if name not in self.best_each or sign * value > sign * self.best_each[name]:
                self.best_each[name] = value
        self.best_primary = self.best_each.get(self.primary, self.best_primary)

    def note_rungs(self, line: dict[str, Any]) -> None:
        """A logged trial's rung results count toward promotion (resume and replay)."""
        self.rungs.note_logged(line, self.primary, self.sign)

    def note_full_row(self, line: dict[str, Any], scores: np.ndarray | None = None) -> None:
        """A trial's per-item scores (a successful full search evaluation, not a cached
        copy) go to the anchors, in trial order: live, replayed and on resume."""
        if self.anchors is None or line.get("status") != "ok" or not is_full(line) or \
                "cached" in line:
            return
        if scores is None and "scores" in line:
            scores = decode_scores(line["scores"])
        self.anchors.note_full(scores, line.get("score_parts"), line.get("trial", -1))
        if self.anchors.fit is not None:
            self.rungs.anchor_at(self.anchors.fit.fraction)

    def details(self) -> dict[str, Any]:
        """What the live view shows beyond the counts (computed only when it redraws)."""
        hv = self.archive.history[-1][1] if self.archive.history else None
        return {"best": dict(self.best_each), "front": len(self.archive.front()),
                "hypervolume": hv, "baseline": dict(self.baseline_best),
                "workers": self.executor.states() if self.executor is not None else []}

    # --- the steady state -------------------------------------------------------------
    def run(self, stop_after: int | None, outstanding: list[Candidate]) -> None:
        """Until the budget is spent, `stop_after` more trials are done or `max_seconds`
        passes; `outstanding`: candidates a checkpoint says were asked but never finished."""
        state, budget = self.state, self.cfg.budget
        deadline = time.monotonic() + self.cfg.max_seconds if self.cfg.max_seconds else None
        # asked before the checkpoint, never finished: re-issue (as many as the budget takes)
        for cand in outstanding[: max(0, budget - state.trials)]:
            self._dispatch(cand)
        while state.trials < budget:
            if stop_after is not None and self.done_here >= stop_after:
                break
            stopping = deadline is not None and time.monotonic() > deadline \
                and not self.replaying()
            if stopping and not self.outstanding:
                break
            if not stopping:
                self._fill()
            self._submit()
            item = self._next_ready()
            if item is not None:
                self._finish(*item)
                continue
            if self.executor is None or not self.executor.running():
                if self.queue and self.executor is not None:
                    self.executor.wait()  # jobs but no worker to take them: it says why
                if self.replaying():
                    nxt = self._next_logged_id()
                    where = f"next logged id {nxt}" if nxt is not None else \
                        f"no line of the log is trial {state.trials}, later ones are"
                    raise RunError(
                        f"{self.log_name}: the controller no longer proposes the "
                        f"logged trials ({where}; outstanding {sorted(self.outstanding)}); "
                        "the run cannot be continued exactly")
                if stopping:
                    break
                raise RunError("the controller proposed nothing while no evaluation was "
                               "running (a controller bug); the run is resumable")
            job, out = self.executor.wait()
            self._returned(job, out)

    def run_baselines(self, baselines: list[tuple[int, Baseline]]) -> None:
        """Score hand-set baselines (candidate ids below zero) in full, on every split,
        before the controller asks anything; their results seed it (docs/design.md §7.5)."""
        for cid, b in baselines:
            genome = b.genome if b.genome is not None else np.zeros(0)
            cand = Candidate(cid, genome, {"baseline": b.name})
            self.outstanding[cid] = cand
            fields: dict[str, Any] = {}
            if b.genome is not None:
                fields.update(self.task.log_fields(b.genome, b.payload))
            elif hasattr(b.payload, "digest"):
                fields["recipe_digest"] = b.payload.digest()
            key = self.task.cache_key(b.payload)
            if key and b.genome is not None:
                fields["cache_key"] = key
            fields["baseline"] = b.name
            self.fields[cid], self.payloads[cid] = fields, b.payload
            self.queue.append(Job(cid, b.payload, fraction=1.0))
        while any(cid < 0 for cid in self.outstanding):
            self._submit()
            if self.ready:
                self._finish(*self.ready.pop(0))
                continue
            assert self.executor is not None
            if not self.executor.running():
                self.executor.wait()  # jobs but no worker to take them: it says why
            job, out = self.executor.wait()
            self._returned(job, out)

    def replaying(self) -> bool:
        """Logged trials past the checkpoint remain to be asked or told again."""
        return bool(self.replay or self.replayed_lines)

    def _next_logged_id(self) -> int | None:
        """The candidate id of the logged trial to be told next (for errors)."""
        lines = [*self.replay.values(), *self.replayed_lines.values()]
        return next((x["id"] for x in lines if x["trial"] == self.state.trials), None)

    def _next_ready(self) -> tuple[Candidate, Result, dict[str, Any] | None] | None:
        """The finished trial to log and tell next: the first ready one, or, while replaying,
        the one logged next (trial numbers are the live run's finishing order), with fresh
        results held back: the live run told none of them before its logged trials."""
        if not self.replaying():
            return self.ready.pop(0) if self.ready else None
        for i, (cand, _, fields) in enumerate(self.ready):
            line = self.replayed_lines.get(cand.id) if fields is None else None
            if line is not None and line["trial"] == self.state.trials:
                return self.ready.pop(i)
        return None

    def _done(self, cand: Candidate, res: Result, fields: dict[str, Any]) -> None:
        """An evaluation finished: finish the trial now, or hold it while replaying."""
        if self.replaying():
            self.ready.append((cand, res, fields))
        else:
            self._finish(cand, res, fields)

    def _fill(self) -> None:
        """Ask while a worker would be idle (and never past the budget)."""
        limit = self.replay_capacity if self.replay else self.capacity
        assert self.controller is not None
        while len(self.outstanding) < limit:
            room = self.cfg.budget - self.state.trials - len(self.outstanding)
            if room <= 0:
                return
            t0 = time.perf_counter()
            cands = self.controller.ask()[:room]
            self.state.timing.controller += time.perf_counter() - t0
            if not cands:
                return
            # serially every ask before the log's end was logged; with several workers an
            # ask may be one that was in flight when the run stopped (evaluated again)
            if self.replay and self.replay_capacity == 1 and \
                    not any(c.id in self.replay for c in cands):
                raise RunError(
                    f"{self.log_name}: the controller no longer proposes the logged "
                    f"trials (next logged id {min(self.replay)}, asked "
                    f"{[c.id for c in cands]}); the run cannot be continued exactly")
            for cand in cands:
                self._dispatch(cand)

    def _dispatch(self, cand: Candidate) -> None:
        """A candidate answered from the log or the cache is ready now; the rest queue."""
        self.outstanding[cand.id] = cand
        line = self.replay.pop(cand.id, None)
        if line is not None:
            if not same_genome(line, cand.genome):
                raise RunError(
                    f"{self.log_name}: trial {line['trial']} (id {cand.id}) was logged "
                    "for another genome than the controller proposes now; the run cannot be "
                    "continued exactly")
            self.replayed_lines[cand.id] = line
            self.ready.append((cand, result_from_line(line), None))
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
            res = result_from_line(hit)
            res.candidate_id, res.seconds = cand.id, 0.0
            self.ready.append((cand, res, {**fields, "cached": hit["trial"]}))
            return
        self.fields[cand.id], self.payloads[cand.id] = fields, payload
        fit = self.anchors.fit if self.anchors is not None else None
        if fit is None:
            self.queue.append(Job(cand.id, payload, fraction=self.rungs.first))
            return
        fields["anchors_fit"] = fit.rows  # how many full evaluations they were learned from
        self.queue.append(Job(cand.id, payload, fraction=fit.fraction, items=fit.items))

    def _submit(self) -> None:
        while self.queue and self.executor is not None and \
                self.executor.running() < self.executor.capacity:
            self.executor.submit(self.queue.pop(0))

    def _returned(self, job: Job, out: Outcome) -> None:
        cand = self.outstanding[job.candidate_id]
        self.state.timing.evaluation += out.seconds
        if job.split != "search":
            res, fields, waiting = self.scored[cand.id]
            waiting.discard(job.split)
            res.seconds += out.seconds
            if out.status != "ok":
                fields[f"{job.split}_error"] = out.error
            elif job.split == "validation":
                res.validation = out.objectives
            else:
                res.heldout = out.objectives
                parts = out.extra.get("score_parts")
                if out.scores is not None and parts:
                    fields["heldout_items"] = {"parts": parts, **encode_scores(out.scores)}
            if not waiting:
                del self.scored[cand.id]
                self._done(cand, res, fields)
            return
        res = self._result(cand, out)
        res.seconds += self.rung_seconds.pop(cand.id, 0.0)
        if job.fraction < 1:
            # a controller's initial members always go on: they seed its archive (M2N2
            # has nothing to breed from until they are scored in full)
            seed = bool(cand.info.get("initial"))
            if res.status == "ok" and (self.rungs.promotes(
                    job.fraction, self.sign * res.objectives[self.primary]) or seed):
                self.lower_rungs.setdefault(cand.id, {})[repr(job.fraction)] = res.objectives
                self.rung_seconds[cand.id] = res.seconds
                nxt = self.rungs.next(job.fraction)
                self.queue.insert(0, Job(cand.id, self.payloads[cand.id], fraction=nxt))
                return
            res.scores, res.fidelity = None, job.fraction  # M2N2's archive: full rows only
        fields = {**self.fields.pop(cand.id), **out.extra}
        if self.rungs.multi:
            fields["fidelity"] = job.fraction
            fields["rungs"] = self.lower_rungs.pop(cand.id, {})
        if res.fidelity < 1:
            self._done(cand, res, fields)
            return
        if res.status == "ok" and self._rescored(cand, res):
            # scored on the validation split (which chooses the best) and the test split
            # (the figure reported); the trial finishes when both are back
            self.scored[cand.id] = (res, fields, set(self.rescore_splits))
            for split in reversed(self.rescore_splits):
                self.queue.insert(0, Job(cand.id, self.payloads[cand.id], split))
            return
        self._done(cand, res, fields)

    def _rescored(self, cand: Candidate, res: Result) -> bool:
        """Baselines, Pareto-front entrants and the best `rescore_top` so far by the first
        objective: the candidates the best is chosen among."""
        if "baseline" in cand.info or not self.archive.dominated(res.objectives):
            return True
        k = self.cfg.rescore_top
        value = self.sign * res.objectives[self.primary]
        return k > 0 and (len(self.top) < k or value > self.top[k - 1])

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
        if replayed is not None and not self.replaying():
            self.replay_done = True
        number = replayed["trial"] if replayed is not None else state.trials
        if replayed is not None and self.rungs.multi:  # its rungs count as they did
            self.note_rungs(replayed)
        if res.status == "ok" and res.fidelity >= 1:
            self.archive.add(number, res.objectives)
            if self.anchors is not None:
                self.note_full_row({"status": "ok", "trial": number,
                                    **(replayed if replayed is not None else fields or {})},
                                   res.scores)
        if fields is not None:
            assert self.log is not None
            t1 = time.perf_counter()
            line = trial_line(state.trials, cand, res, fields)
            self.log.write(json.dumps(line) + "\n")
            for tracker in self.trackers:
                tracker.trial(line)
            if t1 - self.last_sync >= LOG_SYNC_SECONDS:
                self._sync_log()
            state.timing.logging += time.perf_counter() - t1
            self.done_here += 1
            key = fields.get("cache_key")
            if key and res.status == "ok" and "cached" not in fields and res.fidelity >= 1:
                self.cache.setdefault(key, line)
        if res.heldout is not None and self._beats_best(res):
            state.best = {"trial": number, "objectives": res.objectives,
                          "heldout": res.heldout, "validation": res.validation}
            state.best_genome = cand.genome
        state.trials += 1
        baseline = cand.info.get("baseline")
        if baseline is None:
            assert self.controller is not None
            t0 = time.perf_counter()
            self.controller.tell([(cand, res)])
            state.timing.controller += time.perf_counter() - t0
        if fields is not None:
            self.note_best({"status": res.status, "objectives": res.objectives,
                            "fidelity": res.fidelity, "baseline": baseline})
            if self.progress is not None:
                self.progress.update(state.trials, self.best_primary, self.details)
        if baseline is None:  # the first checkpoint follows the baselines
            self._maybe_checkpoint()
        self.note_status(res.status, res.error)
        if not self.ok_seen and self.done_here and \
                state.trials >= min(ALL_FAILED_STOP, self.cfg.budget):
            raise RunError(self._all_failed_message())

    def _beats_best(self, res: Result) -> bool:
        """The best trial is chosen on the validation split when there is one (on the search
        split, which the controller saw, otherwise)."""
        best = self.state.best
        if best is None:
            return True
        split = "validation" if res.validation is not None and best.get("validation") \
            else "objectives"
        mine = res.validation if split == "validation" else res.objectives
        return bool(self.sign * mine[self.primary] > self.sign * best[split][self.primary])

    def note_status(self, status: str, error: str | None) -> None:
        """Count a trial's outcome toward the all-failed rule (logged trials too)."""
        if status == "ok":
            self.ok_seen = True
        else:
            self.errors[str(error or "unknown error")] += 1

    def _all_failed_message(self) -> str:
        trials, budget = self.state.trials, self.cfg.budget
        error, count = self.errors.most_common(1)[0]
        more = self.resume_hint if trials < budget else \
            f"{self.resume_hint} --budget {budget + trials} (or a new --run-dir)"
        return (f"the first {trials} trials all failed, so the evaluation itself is probably "
                f"broken; the commonest error ({count} of {trials}): {error}\n"
                f"fix it, then continue with: {more}")

    def _sync_log(self) -> None:
        assert self.log is not None
        self.log.flush()
        os.fsync(self.log.fileno())
        self.last_sync = time.monotonic()

    def _maybe_checkpoint(self) -> None:
        """At multiples of `checkpoint_every` trials, once a resume's replay is done (not to
        replay it again) and at the budget: with one worker (or generational CMA-ES) only at
        a boundary with nothing out; with several workers and a steady-state controller at
        any moment, the candidates out recorded for resume to re-issue."""
        state = self.state
        assert self.controller is not None
        if self.replaying():
            return  # the checkpoint this run resumed from still holds; replay is cheap
        steady = self.capacity > 1 and self.controller.outstanding_resumes
        if (self.outstanding or not self.controller.at_boundary()) and not steady:
            return  # CMA-ES mid-generation (or a serial run between asks): not a boundary
        every = self.cfg.checkpoint_every  # at its multiples, wherever a session started
        if not (state.trials // every > self.last_checkpoint // every or self.replay_done
                or state.trials >= self.cfg.budget):
            return
        self._sync_log()
        out = list(self.outstanding.values()) if self.controller.outstanding_resumes else []
        self.checkpoint(out, self.capacity)  # the capacity the asks from here are made under
        self.last_checkpoint, self.replay_done = state.trials, False

__all__ = ["ALL_FAILED_STOP", "LOG_SYNC_SECONDS", "RunState", "SchedulingLoop", "Timing"]
