"""The Ray executor: one actor per GPU or CPU slot, each holding the task's worker (resident
sources, one live model, the evaluators), on this machine or a cluster.

The driver ships jobs (a recipe or a genome: data, never tensors) and collects outcomes with
`ray.wait`, so a worker gets its next candidate the moment it returns one. Worker failures
are handled here, below the run loop: a worker process that dies has its job re-run on a
replacement; an evaluation past `timeout_s` is a failed trial and its worker is replaced; a
slot whose worker fails `max_failures` times in a row is retired with the reason logged, and
when no slot is left `wait` raises `WorkerError` (the run directory stays resumable).

No wait on Ray is unbounded. A lost node fails its actors' calls (Ray notices the node gone),
so their candidates re-run on the surviving workers while the replacements wait for a node.
A replacement nobody can place (the embedded Ray's only node died; every worker node of a
cluster was preempted) waits forever in Ray: when no worker has been placed for
`placement_timeout_s`, `wait` raises `NoWorkersError` instead, and the run stays resumable.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from evomerge.executors.base import (
    Executor,
    Job,
    Outcome,
    WorkerError,
    describe_job,
    evaluate_job,
)
from evomerge.search_config import SearchConfig
from evomerge.tasks.registry import build_task

log = logging.getLogger(__name__)

POLL_S = 1.0  # the longest single wait on Ray: placement, the live view and Ctrl-C get a look
SETTLE_S = 10.0  # at start, how long a worker still waiting for a node is waited for


class NoWorkersError(WorkerError):
    """No Ray node has taken a worker for `placement_timeout_s`: the nodes are gone or full."""


def actor_config(config: dict[str, Any]) -> Any:
    """The config as an actor runs it: Ray shows each GPU actor only its own GPU (as cuda:0),
    so `cuda:N` becomes `cuda`."""
    cfg = SearchConfig.model_validate(config, context={"frozen": True})
    candidate = getattr(cfg.task, "candidate", None)
    if candidate is not None and candidate.device.startswith("cuda"):
        candidate.device = "cuda"
    return cfg


class _WorkerActor:
    """The actor body. Its constructor is cheap, so the driver can tell a worker waiting for a
    node (`whoami` unanswered: bounded by the placement grace period) from one building its
    task (`setup`: minutes for a large model, and Ray reports its node's loss)."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.worker: Any = None

    def setup(self, config: dict[str, Any], origin: str) -> None:
        self.worker = build_task(actor_config(config), origin).worker()

    def whoami(self) -> tuple[int, str]:
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def evaluate(self, job: Job) -> tuple[Outcome, float]:
        """The outcome, and when the evaluation started (for the queue wait)."""
        started = time.time()
        return evaluate_job(self.worker, job), started


@dataclass
class _Slot:
    index: int
    actor: Any = None
    pid: int = 0
    node: str = ""
    failures: int = 0  # in a row
    busy: bool = False
    retired: str | None = None
    busy_seconds: float = 0.0
    phase: str = "placing"  # placing (waiting for a node) → building (its task) → up
    since: float = 0.0  # when the phase began (time.monotonic())


@dataclass
class _Flight:
    job: Job
    submitted: float
    slot: _Slot | None = None  # set when dispatched
    dispatched: float = 0.0
    crashes: int = 0


@dataclass
class RaySettings:
    """The config's Ray executor settings: workers, resources, timeouts and failure limits."""
    workers: int = 2
    address: str | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    timeout_s: float | None = None
    max_failures: int = 3
    placement_timeout_s: float = 300.0  # no worker placed this long: NoWorkersError


class RayExecutor(Executor):
    """Evaluates jobs on Ray actors, replacing workers that die, hang or cannot be placed."""
    def __init__(self, config: dict[str, Any], origin: str, settings: RaySettings):
        import ray

        self.s = settings
        self.config, self.origin = config, origin
        self._started_ray = False
        self._embedded = False
        self.slots = [_Slot(i) for i in range(settings.workers)]
        self._flights: dict[Any, _Flight] = {}
        self._waiting: list[_Flight] = []  # re-runs waiting for a free slot
        self._starting: dict[Any, _Slot] = {}  # workers waiting for a node or building
        self._unplaced_since: float | None = None  # since when no worker is placed
        self._warned = False  # the "waiting for workers" warning, once per wait
        if not ray.is_initialized():
            self._init_ray()
        self._remote = ray.remote(_WorkerActor)
        try:
            self._start_all()
        except BaseException:  # Ctrl-C included: what was started is stopped
            self.close()
            raise
        self.t0 = time.monotonic()

    def _init_ray(self) -> None:
        """Join the configured cluster, or start the embedded default on this machine."""
        import ray

        s = self.s
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        address = s.address or os.environ.get("RAY_ADDRESS")
        if address:
            _check_reachable(address)
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:  # the embedded default: this machine, explicit resources, no dashboard
                ray.init(address="local", num_cpus=max(1, int(s.workers * s.cpus_per_worker)),
                         num_gpus=int(s.workers * s.gpus_per_worker) or None,
                         include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "Ray on this machine"
            raise WorkerError(f"could not start or join {where}: {_reason(exc)}") from None
        self._started_ray, self._embedded = True, not address

    # --- workers --------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        """A new actor in the slot; it takes jobs once placed (`whoami`) and built (`setup`)."""
        threads = max(1, int(self.s.cpus_per_worker))
        opts: dict[str, Any] = {"num_cpus": self.s.cpus_per_worker, "max_restarts": 0,
                                "max_concurrency": 1}
        if self.s.gpus_per_worker:
            opts["num_gpus"] = self.s.gpus_per_worker
        slot.actor = self._remote.options(**opts).remote(threads)
        slot.busy, slot.phase, slot.since = True, "placing", time.monotonic()
        self._starting[slot.actor.whoami.remote()] = slot

    def _advance(self, ref: Any) -> str | None:
        """A starting worker's answer (`ref` is ready): placed → build its task; built → it
        takes jobs. Returns why it could not start (None: it is on its way or up)."""
        import ray

        slot = self._starting.pop(ref)
        try:
            answer = ray.get(ref)
        except Exception as exc:
            return _reason(exc)
        if slot.phase == "placing":
            slot.pid, slot.node = answer
            slot.phase, slot.since = "building", time.monotonic()
            self._starting[slot.actor.setup.remote(self.config, self.origin)] = slot
        else:
            slot.phase, slot.busy = "up", False
        return None

    def _start_all(self) -> None:
        """Start every worker and wait until each is up, failed, or (with one up) still waiting
        for a node after SETTLE_S: those join when placed. A task that cannot start fails here,
        named; no node for any worker within the grace period raises NoWorkersError."""
        import ray

        for slot in self.slots:
            self._start(slot)
        failed: dict[int, str] = {}
        while True:
            now = time.monotonic()
            live = [s for s in self.slots if s.index not in failed]
            building = any(s.phase == "building" for s in live)
            placing = [s for s in live if s.phase == "placing"]
            settled = all(now - s.since >= SETTLE_S for s in placing)
            if not building and (not placing or settled):
                if failed:
                    first = min(failed)
                    raise WorkerError(f"worker {first} could not start: {failed[first]}")
                if len(placing) < len(live):
                    break
            self._check_placement()
            ready, _ = ray.wait(list(self._starting), num_returns=1, timeout=POLL_S)
            for ref in ready:
                slot = self._starting[ref]
                why = self._advance(ref)
                if why is not None:
                    failed[slot.index] = why
        for slot in self.slots:
            if slot.phase == "placing":
                log.warning("worker %d is waiting for a Ray node with %s free; the search "
                            "starts without it", slot.index, self._need())

    def _replace(self, slot: _Slot, reason: str, count: bool = True) -> None:
        """A new actor in the slot; `count`: the failure is the slot's (not a candidate
        that kills every worker it runs on)."""
        import ray

        slot.failures += 1 if count else 0
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # already gone
            pass
        if slot.failures >= self.s.max_failures:
            slot.retired = reason
            slot.busy = False
            log.warning("worker %d retired after %d failures in a row: %s", slot.index,
                        slot.failures, reason)
            return
        log.warning("worker %d replaced: %s", slot.index, reason)
        # the new actor waits for a node, then builds its task (minutes for a large model)
        # while the others work: the slot takes jobs again once `wait` sees it up
        self._start(slot)

    def _need(self) -> str:
        """What one worker asks of a node, for messages."""
        need = f"{self.s.cpus_per_worker:g} CPU"
        return need + (f" and {self.s.gpus_per_worker:g} GPU" if self.s.gpus_per_worker else "")

    def _unplaced_for(self) -> float | None:
        """Seconds since no worker was placed (up or building), with one waiting for a node;
        None while one is placed (or none waits)."""
        live = [s for s in self.slots if s.retired is None]
        if not live or any(s.phase != "placing" for s in live):
            self._unplaced_since, self._warned = None, False
            return None
        if self._unplaced_since is None:  # since the last placed worker went
            self._unplaced_since = max(s.since for s in live)
        return time.monotonic() - self._unplaced_since

    def _check_placement(self) -> None:
        """NoWorkersError once no worker has been placed for the grace period."""
        waited = self._unplaced_for()
        if waited is None:
            return
        if waited >= min(SETTLE_S, self.s.placement_timeout_s / 2) and not self._warned:
            self._warned = True
            log.warning("waiting for workers: no Ray node has taken one for %.0f s (each "
                        "needs %s); the run stops at %g s", waited, self._need(),
                        self.s.placement_timeout_s)
        if waited < self.s.placement_timeout_s:
            return
        if self._embedded:  # it has room for every worker: only its node's loss leaves none
            cause = ("the embedded Ray's node is gone (its raylet, or an agent it shares its "
                     "fate with, died or was killed)")
            fix = "resuming starts a fresh one"
        else:
            alive, free = _cluster_state()
            cause = (f"no Ray node has {self._need()} free ({alive} node(s) alive, {free} "
                     "CPU(s) free): the worker nodes were lost, or other work holds them")
            fix = "start or free worker nodes (ray start --address ...), then continue"
        raise NoWorkersError(
            f"no worker could be placed for {self.s.placement_timeout_s:g} s "
            f"(executor.placement_timeout_s): {cause}; {fix}")

    @property
    def capacity(self) -> int:  # type: ignore[override]
        """Jobs that can run at once: one per worker slot not retired."""
        return sum(1 for s in self.slots if s.retired is None)

    def pids(self) -> dict[int, int]:
        """Worker slot → process id (for tests and diagnostics)."""
        return {s.index: s.pid for s in self.slots if s.retired is None and s.phase == "up"}

    # --- jobs -----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue the job and hand it to an idle worker if one is up."""
        self._waiting.append(_Flight(job, time.time()))
        self._dispatch()

    def _dispatch(self) -> None:
        for slot in self.slots:
            if not self._waiting:
                return
            if slot.retired is None and slot.phase == "up" and not slot.busy:
                flight = self._waiting.pop(0)
                flight.slot, flight.dispatched = slot, time.time()
                slot.busy = True
                self._flights[slot.actor.evaluate.remote(flight.job)] = flight

    def states(self) -> list[str]:
        """Per worker: its job and how long it has run, or placing, starting, idle or retired."""
        now = time.time()  # the clock `dispatched` is read on
        flying = {id(f.slot): f for f in self._flights.values() if f.slot is not None}
        out = []
        for slot in self.slots:
            f = flying.get(id(slot))
            since = time.monotonic() - slot.since
            if slot.retired is not None:
                out.append(f"worker {slot.index}: retired ({slot.retired[:60]})")
            elif slot.phase == "placing":
                out.append(f"worker {slot.index}: waiting for a node, {since:.0f} s")
            elif slot.phase == "building":
                out.append(f"worker {slot.index}: starting, {since:.0f} s")
            elif f is not None:
                out.append(f"worker {slot.index}: {describe_job(f.job)}, "
                           f"{now - f.dispatched:.0f} s")
            else:
                out.append(f"worker {slot.index}: idle")
        waited = self._unplaced_for()
        if waited is not None:
            out.insert(0, f"waiting for workers: none placed for {waited:.0f} s; the run "
                          f"stops (resumable) at {self.s.placement_timeout_s:g} s")
        return out

    def running(self) -> int:
        """Jobs on workers plus jobs waiting for one (re-runs included)."""
        return len(self._flights) + len(self._waiting)

    def wait(self) -> tuple[Job, Outcome]:
        """The next finished job; a dead worker's job re-runs elsewhere, a timed-out one fails."""
        import ray

        while True:
            if not self.capacity:
                reasons = "; ".join(f"worker {s.index}: {s.retired}" for s in self.slots)
                raise WorkerError(f"no worker left (each failed {self.s.max_failures} times "
                                  f"in a row: {reasons})")
            if not self._flights and not self._starting:
                raise WorkerError("wait() with nothing running")
            self._check_placement()
            timeout = POLL_S
            if self.s.timeout_s is not None and self._flights:
                first = min(f.dispatched for f in self._flights.values())
                timeout = min(timeout, max(0.0, first + self.s.timeout_s - time.time()))
            ready, _ = ray.wait([*self._flights, *self._starting], num_returns=1,
                                timeout=timeout)
            if not ready:
                done = self._time_out()
                if done is not None:
                    return done
                if self.on_idle is not None:
                    self.on_idle()
                continue
            ref = ready[0]
            if ref in self._starting:  # a worker placed, built, or unable to start
                slot = self._starting[ref]
                why = self._advance(ref)
                if why is not None:
                    self._replace(slot, f"its worker could not start: {why}")
                self._dispatch()
                continue
            flight = self._flights.pop(ref)
            slot = flight.slot
            assert slot is not None  # every flight in `_flights` was dispatched
            slot.busy = False
            try:
                outcome, started = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.NodeDiedError) as exc:  # its process or node is gone
                flight.crashes += 1
                self._replace(slot, f"its process died ({_reason(exc)})",
                              count=flight.crashes == 1)
                if flight.crashes >= self.s.max_failures:
                    self._dispatch()
                    return flight.job, self._failed(
                        flight, f"the worker died {flight.crashes} times evaluating it")
                self._waiting.insert(0, flight)  # re-run on another (or the new) worker
                self._dispatch()
                continue
            except Exception as exc:  # evaluate_job catches the evaluation's own errors
                self._dispatch()
                return flight.job, self._failed(flight, _reason(exc))
            slot.failures = 0
            now = time.time()
            slot.busy_seconds += now - started
            outcome.extra.update(self._fields(flight, started))
            self._dispatch()
            return flight.job, outcome

    def _time_out(self) -> tuple[Job, Outcome] | None:
        now = time.time()
        for ref, flight in list(self._flights.items()):
            if now - flight.dispatched >= (self.s.timeout_s or float("inf")):
                del self._flights[ref]
                self._replace(flight.slot, f"an evaluation ran past timeout_s "
                                           f"{self.s.timeout_s:g}")
                self._dispatch()
                return flight.job, self._failed(
                    flight, f"timed out after {self.s.timeout_s:g} s (worker "
                            f"{flight.slot.index} recycled)")
        return None

    def _failed(self, flight: _Flight, error: str) -> Outcome:
        out = Outcome(status="failed", error=error,
                      seconds=time.time() - (flight.dispatched or flight.submitted))
        out.extra.update(self._fields(flight, flight.submitted))
        return out

    def _fields(self, flight: _Flight, started: float) -> dict[str, Any]:
        return {"worker": flight.slot.index, "node": flight.slot.node,
                "queue_seconds": round(max(0.0, started - flight.submitted), 6),
                "started": round(started, 3)}

    def utilisation(self) -> float:
        """Busy time over wall time, summed over the slots."""
        wall = (time.monotonic() - self.t0) * max(1, len(self.slots))
        return sum(s.busy_seconds for s in self.slots) / wall if wall else 0.0

    def close(self) -> None:
        """Stop the actors (those still waiting for a node too) and the Ray this executor
        started; bounded even when the node is gone. Safe to call twice."""
        import ray

        for slot in self.slots:
            if slot.actor is not None:
                try:
                    ray.kill(slot.actor, no_restart=True)
                except Exception:
                    pass
                slot.actor = None
        self._flights.clear()
        self._starting.clear()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A cluster's `host:port` must answer: Ray itself retries a dead address for minutes."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # `auto`, `ray://...`: left to Ray
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise WorkerError(f"nothing answers at the Ray address {address} ({exc.strerror or exc}"
                          "): start the cluster's head there (`ray start --head --port "
                          f"{port}`), or give its address with --address") from None


def _cluster_state() -> tuple[int | str, str]:
    """Alive nodes and free CPUs, for a message ('?' where Ray cannot say)."""
    import ray

    try:
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        return alive, f"{ray.available_resources().get('CPU', 0.0):g}"
    except Exception:  # the message matters more than this detail
        return "?", "?"


def _reason(exc: BaseException) -> str:
    """The root error of a Ray exception in one line: Ray wraps an actor's own error (and its
    traceback) in its message, whose last `SomeError: ...` line is what went wrong."""
    import re

    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    root = [x for x in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", x)]
    text = root[-1] if root else f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text[:500]
