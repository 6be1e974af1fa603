"""The Ray executor: one actor per GPU or CPU slot, each holding the task's worker (resident
sources, one live model, the evaluators), on this machine or a cluster.

The driver ships jobs (a recipe or a genome: data, never tensors) and collects outcomes with
`ray.wait`, so a worker gets its next candidate the moment it returns one. Worker failures
are handled here, below the run loop: a worker process that dies has its job re-run on a
replacement; an evaluation past `timeout_s` is a failed trial and its worker is replaced; a
slot whose worker fails `max_failures` times in a row is retired with the reason logged, and
when no slot is left `wait` raises `WorkerError` (the run directory stays resumable).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from evomerge.workers.base import (
    Executor,
    Job,
    Outcome,
    WorkerError,
    describe_job,
    evaluate_job,
)

log = logging.getLogger(__name__)


def actor_config(config: dict[str, Any]) -> Any:
    """The config as an actor runs it: Ray shows each GPU actor only its own GPU (as cuda:0),
    so `cuda:N` becomes `cuda`."""
    from evomerge.search_config import SearchConfig

    cfg = SearchConfig.model_validate(config, context={"frozen": True})
    candidate = getattr(cfg.task, "candidate", None)
    if candidate is not None and candidate.device.startswith("cuda"):
        candidate.device = "cuda"
    return cfg


class _Worker:
    """The actor body: builds the task's worker from the frozen config, then evaluates."""

    def __init__(self, config: dict[str, Any], origin: str, threads: int):
        import torch

        from evomerge.tasks.base import build_task

        torch.set_num_threads(max(1, threads))
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


@dataclass
class _Flight:
    job: Job
    submitted: float
    slot: _Slot | None = None  # set when dispatched
    dispatched: float = 0.0
    crashes: int = 0


@dataclass
class RaySettings:
    workers: int = 2
    address: str | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    timeout_s: float | None = None
    max_failures: int = 3


class RayExecutor(Executor):
    def __init__(self, config: dict[str, Any], origin: str, settings: RaySettings):
        import ray

        self.s = settings
        self.config, self.origin = config, origin
        self._started_ray = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            address = settings.address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, logging_level=logging.WARNING,
                         log_to_driver=False)
            else:  # the embedded default: this machine, explicit resources, no dashboard
                ray.init(address="local", num_cpus=max(1, int(settings.workers
                                                            * settings.cpus_per_worker)),
                         num_gpus=int(settings.workers * settings.gpus_per_worker) or None,
                         include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
            self._started_ray = True
        self._remote = ray.remote(_Worker)
        self.slots = [_Slot(i) for i in range(settings.workers)]
        for slot in self.slots:
            self._start(slot)
        # wait for every worker to be built: a task that cannot start fails here, named
        for slot in self.slots:
            try:
                slot.pid, slot.node = ray.get(slot.actor.whoami.remote())
            except Exception as exc:
                self.close()
                raise WorkerError(f"worker {slot.index} could not start: "
                                  f"{_reason(exc)}") from None
        self._flights: dict[Any, _Flight] = {}
        self._waiting: list[_Flight] = []  # re-runs waiting for a free slot
        self._starting: dict[Any, _Slot] = {}  # replacements still building their task
        self.t0 = time.monotonic()

    # --- workers --------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        threads = max(1, int(self.s.cpus_per_worker))
        opts: dict[str, Any] = {"num_cpus": self.s.cpus_per_worker, "max_restarts": 0,
                                "max_concurrency": 1}
        if self.s.gpus_per_worker:
            opts["num_gpus"] = self.s.gpus_per_worker
        slot.actor = self._remote.options(**opts).remote(self.config, self.origin, threads)
        slot.busy = False

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
        self._start(slot)
        # the new actor builds its task (minutes for a large model) while the others work:
        # the slot takes jobs again once `wait` sees it answer
        slot.busy = True
        self._starting[slot.actor.whoami.remote()] = slot

    @property
    def capacity(self) -> int:  # type: ignore[override]
        return sum(1 for s in self.slots if s.retired is None)

    def pids(self) -> dict[int, int]:
        """Worker slot → process id (for tests and diagnostics)."""
        return {s.index: s.pid for s in self.slots if s.retired is None}

    # --- jobs -----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        self._waiting.append(_Flight(job, time.time()))
        self._dispatch()

    def _dispatch(self) -> None:
        for slot in self.slots:
            if not self._waiting:
                return
            if slot.retired is None and not slot.busy:
                flight = self._waiting.pop(0)
                flight.slot, flight.dispatched = slot, time.time()
                slot.busy = True
                self._flights[slot.actor.evaluate.remote(flight.job)] = flight

    def states(self) -> list[str]:
        now = time.time()  # the clock `dispatched` is read on
        flying = {id(f.slot): f for f in self._flights.values() if f.slot is not None}
        out = []
        for slot in self.slots:
            f = flying.get(id(slot))
            if slot.retired is not None:
                out.append(f"worker {slot.index}: retired ({slot.retired[:60]})")
            elif slot in self._starting.values():
                out.append(f"worker {slot.index}: starting (replacement)")
            elif f is not None:
                out.append(f"worker {slot.index}: {describe_job(f.job)}, "
                           f"{now - f.dispatched:.0f} s")
            else:
                out.append(f"worker {slot.index}: idle")
        return out

    def running(self) -> int:
        return len(self._flights) + len(self._waiting)

    def wait(self) -> tuple[Job, Outcome]:
        import ray

        while True:
            if not self.capacity:
                reasons = "; ".join(f"worker {s.index}: {s.retired}" for s in self.slots)
                raise WorkerError(f"no worker left (each failed {self.s.max_failures} times "
                                  f"in a row: {reasons})")
            if not self._flights and not self._starting:
                raise WorkerError("wait() with nothing running")
            timeout = None
            if self.s.timeout_s is not None and self._flights:
                first = min(f.dispatched for f in self._flights.values())
                timeout = max(0.0, first + self.s.timeout_s - time.time())
            ready, _ = ray.wait([*self._flights, *self._starting], num_returns=1,
                                timeout=timeout)
            if not ready:
                done = self._time_out()
                if done is not None:
                    return done
                continue
            ref = ready[0]
            if ref in self._starting:  # a replacement is up (or failed to start)
                slot = self._starting.pop(ref)
                try:
                    slot.pid, slot.node = ray.get(ref)
                    slot.busy = False
                except Exception as exc:
                    self._replace(slot, f"its replacement could not start: {_reason(exc)}")
                self._dispatch()
                continue
            flight = self._flights.pop(ref)
            slot = flight.slot
            assert slot is not None  # every flight in `_flights` was dispatched
            slot.busy = False
            try:
                outcome, started = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
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
        import ray

        for slot in self.slots:
            if slot.actor is not None:
                try:
                    ray.kill(slot.actor, no_restart=True)
                except Exception:
                    pass
        if self._started_ray and ray.is_initialized():
            ray.shutdown()


def _reason(exc: BaseException) -> str:
    """The root error of a Ray exception in one line: Ray wraps an actor's own error (and its
    traceback) in its message, whose last `SomeError: ...` line is what went wrong."""
    import re

    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    root = [x for x in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", x)]
    text = root[-1] if root else f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text[:500]
