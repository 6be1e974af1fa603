"""A search run mirrored to MLflow through its public client (`MlflowClient`), on a thread of
its own so that a slow or unreachable tracking server never holds the search up.

One evomerge run is one MLflow run: the config flattened into params, each trial's objectives
as metrics stepped by trial number (`search/<objective>` in full, `rung/<objective>` at a
lower fidelity, `validation/…` and `test/…` where re-scored, `trial_seconds` for every
trial), and when the budget is spent the report, the plots and the best recipe as
artifacts. The MLflow run id is kept in the run directory (`mlflow_run.json`), so a resumed
run appends to the same MLflow run; on every start the trials the MLflow run lacks (those a
killed session had not sent yet) are sent first. MLflow 3's file store refuses new data
("maintenance mode"), so the default store is SQLite inside the run directory."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evomerge.atomic import write_text_atomic
from evomerge.tracking.base import Tracker

RUN_FILE = "mlflow_run.json"
# how long the end of a session waits for queued updates before leaving them unsent
CLOSE_SECONDS = 20.0
QUEUE_LIMIT = 100_000  # updates waiting; past it trial updates are dropped (and counted)
BATCH_METRICS = 1000  # MLflow's limit per log_batch
BATCH_PARAMS = 100
PARAM_VALUE_LIMIT = 6000  # MLflow 3's limit on a param's value
STEP_KEY = "trial_seconds"  # logged for every trial: its steps say which trials MLflow has


def flat_params(data: Any, prefix: str = "") -> dict[str, str]:
    """A config as MLflow params: dotted keys, lists as JSON, values cut to MLflow's limit."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flat_params(value, f"{prefix}{key}."))
        return out
    text = json.dumps(data) if isinstance(data, list | dict) else str(data)
    out[prefix.rstrip(".")[:250]] = text[:PARAM_VALUE_LIMIT]
    return out


def trial_metrics(line: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step) of one trial line."""
    step = int(line["trial"])
    out = [(STEP_KEY, float(line.get("seconds") or 0.0), step),
           ("failed", 0.0 if line["status"] == "ok" else 1.0, step)]
    if line["status"] != "ok":
        return out
    full = line.get("fidelity", 1.0) >= 1
    for name, value in (line.get("objectives") or {}).items():
        out.append((f"{'search' if full else 'rung'}/{name}", float(value), step))
    if not full:
        out.append(("fidelity", float(line["fidelity"]), step))
    for split, key in (("validation", "validation"), ("test", "heldout")):
        for name, value in (line.get(key) or {}).items():
            out.append((f"{split}/{name}", float(value), step))
    return out


class MlflowTracker(Tracker):
    """Queues the run's events; a daemon thread sends them with its own MlflowClient."""

    def __init__(self, spec: Any, cfg: Any, run_dir: Path, warn: Callable[[str], None]):
        self.run_dir = Path(run_dir)
        self.default_store = spec.uri is None
        self.uri = spec.uri or f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"
        self.experiment = spec.experiment or cfg.name
        self.run_name = cfg.name
        self.params = flat_params(cfg.model_dump(mode="json"))
        self.warn = warn
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue(QUEUE_LIMIT)
        self.dropped = 0
        self.broken = False
        self.run_id: str | None = None
        self.closing = threading.Event()
        self.completed = False
        self.thread = threading.Thread(target=self._work, name="evomerge-mlflow", daemon=True)
        self.thread.start()

    # --- the search's side: never blocks, never raises --------------------------------
    def _put(self, kind: str, data: Any) -> None:
        if self.broken:
            return
        try:
            self.queue.put_nowait((kind, data))
        except queue.Full:
            self.dropped += 1

    def start(self, logged: list[dict[str, Any]]) -> None:
        """Open the MLflow run (create it, or reopen the one this directory names)."""
        self._put("start", [line for line in logged if "trial" in line])

    def trial(self, line: dict[str, Any]) -> None:
        """Send a trial's metrics."""
        self._put("trial", line)

    def finish(self, artifacts: dict[str, Path]) -> None:
        """Attach the run's outputs."""
        self._put("finish", artifacts)

    def close(self, completed: bool) -> None:
        """Mark the MLflow run FINISHED (budget spent) or KILLED (stopped, resumable), waiting
        at most CLOSE_SECONDS for what is queued."""
        self.completed = completed
        self.closing.set()  # the thread closes once the queue is empty
        self.thread.join(CLOSE_SECONDS)
        if self.thread.is_alive():
            self.warn(f"MLflow ({self.uri}): still sending after {CLOSE_SECONDS:.0f} s with "
                      f"{self.queue.qsize()} update(s) queued; left unsent (the run directory "
                      "holds everything, and a resumed run sends the missing trials)")
        elif self.dropped:
            self.warn(f"MLflow: {self.dropped} trial update(s) were dropped while the tracker "
                      "lagged; a resumed run sends the missing trials")

    # --- the tracker's thread ------------------------------------------------------------
    def _work(self) -> None:
        client = None
        held: tuple[str, Any] | None = None  # taken while batching trials, handled next
        while True:
            if held is None:
                try:
                    held = self.queue.get(timeout=0.2)
                except queue.Empty:
                    if self.closing.is_set():
                        held = ("close", self.completed)
                    else:
                        continue
            kind, data = held
            held = None
            if self.broken:
                if kind == "close":
                    return
                continue
            try:
                if client is None:
                    client = self._client()
                if kind == "start":
                    self._open(client)
                    self._send(client, data, self._steps(client))
                elif kind == "trial":
                    lines = [data]
                    while len(lines) < 200:  # whatever else is waiting, in one batch
                        try:
                            nxt = self.queue.get_nowait()
                        except queue.Empty:
                            break
                        if nxt[0] != "trial":
                            held = nxt
                            break
                        lines.append(nxt[1])
                    self._send(client, lines, set())
                elif kind == "finish":
                    self._attach(client, data)
                elif kind == "close":
                    if self.run_id is not None:
                        client.set_terminated(self.run_id, "FINISHED" if data else "KILLED")
                    return
            except Exception as exc:  # reported once; the search goes on
                self.broken = True
                self.warn(f"MLflow tracking stopped ({self.uri}): {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}; the search goes "
                          "on, and its run directory holds everything")
                if kind == "close":
                    return

    def _client(self) -> Any:
        for name in ("mlflow", "alembic"):  # store migrations log at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module=r"mlflow\.")
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def _open(self, client: Any) -> None:
        """Reopen the MLflow run this directory names, or create one with the params."""
        from mlflow.entities import Param, RunStatus
        from mlflow.exceptions import MlflowException

        path = self.run_dir / RUN_FILE
        saved = json.loads(path.read_text()) if path.exists() else {}
        if saved.get("uri") == self.uri:
            try:
                client.get_run(saved["run_id"])
                self.run_id = saved["run_id"]
                client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                return
            except MlflowException:
                self.warn(f"MLflow: the run {saved['run_id']} this directory was tracked in "
                          f"is gone from {self.uri}; starting a new one")
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            where = (self.run_dir / "mlflow-artifacts").resolve().as_uri() \
                if self.default_store else None
            exp_id = client.create_experiment(self.experiment, artifact_location=where)
        run = client.create_run(exp_id, run_name=self.run_name,
                                tags={"evomerge.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in self.params.items()]
        for i in range(0, len(params), BATCH_PARAMS):
            client.log_batch(self.run_id, params=params[i: i + BATCH_PARAMS])
        write_text_atomic(path, json.dumps({"uri": self.uri, "run_id": self.run_id,
                                            "experiment_id": exp_id}) + "\n")

    def _steps(self, client: Any) -> set[int]:
        assert self.run_id is not None
        return {int(m.step) for m in client.get_metric_history(self.run_id, STEP_KEY)}

    def _send(self, client: Any, lines: list[dict[str, Any]], have: set[int]) -> None:
        from mlflow.entities import Metric

        assert self.run_id is not None
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for line in lines if line["trial"] not in have
                   for k, v, step in trial_metrics(line)]
        for i in range(0, len(metrics), BATCH_METRICS):
            client.log_batch(self.run_id, metrics=metrics[i: i + BATCH_METRICS])

    def _attach(self, client: Any, artifacts: dict[str, Path]) -> None:
        assert self.run_id is not None
        for name, path in artifacts.items():
            folder = str(Path(name).parent) if str(Path(name).parent) != "." else None
            if Path(path).is_dir():
                client.log_artifacts(self.run_id, str(path), name)
            else:
                client.log_artifact(self.run_id, str(path), folder)


__all__ = ["CLOSE_SECONDS", "RUN_FILE", "MlflowTracker", "flat_params", "trial_metrics"]
