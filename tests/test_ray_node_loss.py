"""Lost Ray nodes never hang a search: the embedded Ray's node killed mid-run (the run stops
after the placement grace period, named, and resumes), and on a loopback cluster
(`ray.cluster_utils.Cluster`, a driver-only head and worker nodes) one worker node removed
(its candidates re-run on the other, the run completes) or every worker node removed (the run
stops, then resumes on a new node). Also: a run that fails before its loop still stops the
Ray it started."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.executors.ray_executor import NoWorkersError
from evomerge.progress import Progress
from evomerge.run.search_run import SearchRun

from .conftest import write_yaml

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
runner = CliRunner()
EXE = str(Path(sys.executable).parent / "evomerge")
# Ray notices a dead node after health checks (~15 s by default; ~2 s with these)
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
               "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}


def synthetic_config(path: Path, budget: int, seconds: float = 0.4, **executor) -> Path:
    """A model-free search whose evaluations each take `seconds` (no tail, no outliers)."""
    return write_yaml(path, {
        "name": "node-loss", "seed": 0, "budget": budget, "checkpoint_every": 2,
        "controller": {"kind": "random"},
        "executor": {"kind": "ray", "workers": 2, **executor},
        "task": {"kind": "synthetic", "dimension": 4, "median_seconds": seconds,
                 "tail": 0.0}})


def lines_of(run_dir: Path) -> list[dict]:
    log = run_dir / "trials.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def assert_complete(run_dir: Path, budget: int) -> list[dict]:
    """Every trial logged once, none lost, none failed (a lost worker's candidate re-runs)."""
    lines = lines_of(run_dir)
    assert [x["trial"] for x in lines] == list(range(budget))
    assert len({x["id"] for x in lines}) == budget
    assert all(x["status"] == "ok" for x in lines), [x.get("error") for x in lines]
    return lines


def when_logged(run_dir: Path, count: int, action: Callable[[], None],
                limit: float = 120.0) -> threading.Thread:
    """Run `action` in a thread once the run has logged `count` trials."""
    def watch() -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if len(lines_of(run_dir)) >= count:
                action()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def kill(procs: list) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def node_processes(kind: str, ours: list) -> list:
    """What to kill to take the node down: its raylet and everything it started (agents,
    workers), or only its DashboardAgent (the raylet fate-shares with it; the workers die
    once Ray marks the node dead)."""
    named = {p.pid: p.name() for p in ours if p.is_running()}
    if kind == "agent":
        return [p for p in ours if named.get(p.pid) == "ray::DashboardAgent"]
    raylet = [p for p in ours if named.get(p.pid) == "raylet"]
    assert len(raylet) == 1, sorted(named.values())
    return [raylet[0], *raylet[0].children(recursive=True)]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["node", "agent"])
def test_the_embedded_nodes_loss_stops_the_run_named_and_resume_completes(tmp_path,
                                                                           hermetic, kind):
    """The driver survives its node; the replacements can never be placed, so the run stops
    after the grace period with the error and the resume command, and `resume` completes it
    on a fresh Ray."""
    cfg = synthetic_config(tmp_path / "cfg.yaml", budget=14, seconds=0.8,
                           placement_timeout_s=12)
    run_dir = tmp_path / "r"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(hermetic),
           **{f"RAY_{k}": str(v) for k, v in FAST_HEALTH.items()}}
    stderr = tmp_path / "stderr.txt"  # a file, not a pipe: Ray's messages cannot fill it
    with open(stderr, "w") as sink:
        proc = subprocess.Popen([EXE, "search", str(cfg), "--run-dir", str(run_dir)],
                                stdout=subprocess.DEVNULL, stderr=sink, env=env)
    ours: list = []
    try:
        deadline = time.monotonic() + 120
        while len(lines_of(run_dir)) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the search logged nothing in 120 s"
            time.sleep(0.05)
        ours = psutil.Process(proc.pid).children(recursive=True)
        victims = node_processes(kind, ours)
        assert victims, sorted(p.name() for p in ours)
        kill(victims)
        killed = time.monotonic()
        proc.wait(timeout=120)
        stopped = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill(ours)  # whatever of its Ray outlived it, gone before its files are
        psutil.wait_procs(ours, timeout=30)
    err = stderr.read_text()
    assert proc.returncode == 2, err[-3000:]
    assert "no worker could be placed for 12 s" in err, err[-3000:]
    assert "embedded Ray's node is gone" in err
    assert f"continue with: evomerge resume {run_dir}" in err
    assert "Traceback" not in err and "waiting for workers" in err
    assert stopped < 60, f"stopped {stopped:.0f} s after the node died"
    done = len(lines_of(run_dir))
    assert 2 <= done < 14
    res = runner.invoke(app, ["resume", str(run_dir), "-q"])
    assert res.exit_code == 0, res.output
    assert_complete(run_dir, 14)


@pytest.fixture()
def cluster() -> Iterator[tuple[Any, list[Any]]]:
    """A driver-only head (0 CPUs) and two worker nodes with 1 CPU each, torn down after
    (`Cluster.shutdown` stops exactly its own processes)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH})
    try:
        yield c, [c.add_node(num_cpus=1) for _ in range(2)]
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


@pytest.mark.timeout(180)
def test_a_lost_worker_node_has_its_candidates_rerun_and_the_run_goes_on(tmp_path, cluster,
                                                                          caplog):
    cluster, (lost, kept) = cluster
    cfg = synthetic_config(tmp_path / "cfg.yaml", budget=14, address=cluster.address,
                           placement_timeout_s=20)
    run_dir = tmp_path / "r"
    thread = when_logged(run_dir, 4, lambda: cluster.remove_node(lost, allow_graceful=False))
    with caplog.at_level(logging.WARNING):
        SearchRun.create(cfg, run_dir).run()
    thread.join()
    lines = assert_complete(run_dir, 14)
    # both evaluated, then only the survivor; the lost node's candidate in flight re-ran
    assert len({x["node"] for x in lines}) == 2
    assert {x["node"] for x in lines[-4:]} == {kept.node_id}
    assert "replaced: its process died" in caplog.text


@pytest.mark.timeout(180)
def test_with_every_worker_node_lost_the_run_stops_and_resumes_on_a_new_node(tmp_path,
                                                                              cluster):
    cluster, nodes = cluster
    cfg = synthetic_config(tmp_path / "cfg.yaml", budget=12, address=cluster.address,
                           placement_timeout_s=12)
    run_dir = tmp_path / "r"
    removed: list[float] = []

    def remove_all() -> None:
        for node in nodes:
            cluster.remove_node(node, allow_graceful=False)
        removed.append(time.monotonic())

    thread = when_logged(run_dir, 4, remove_all)
    view = io.StringIO()
    run = SearchRun.create(cfg, run_dir)
    with pytest.raises(NoWorkersError, match="no worker could be placed for 12 s") as exc:
        run.run(progress=Progress("plain", stream=view, every=0.5))
    stopped = time.monotonic() - removed[0]
    thread.join()
    assert "no Ray node has 1 CPU free (1 node(s) alive" in str(exc.value)
    assert stopped < 60, f"stopped {stopped:.0f} s after the nodes went"
    assert view.getvalue().count("waiting for workers") >= 3  # redrawn while it waited
    assert not ray.is_initialized()  # the run let go of the cluster
    assert 4 <= len(lines_of(run_dir)) < 12
    cluster.add_node(num_cpus=2)
    SearchRun.open(run_dir).run()
    assert_complete(run_dir, 12)


@pytest.mark.timeout(120)
def test_a_run_failing_at_its_first_checkpoint_stops_its_ray(tmp_path, monkeypatch):
    """The first checkpoint is written after the workers start: an error there must still
    stop them and the embedded Ray, or they hold the CPUs the next run in this process
    needs (its workers would never be placed)."""
    cfg = synthetic_config(tmp_path / "cfg.yaml", budget=4)

    def full_disk(*args, **kwargs) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SearchRun, "_checkpoint", full_disk)
    with pytest.raises(OSError, match="No space left"):
        SearchRun.create(cfg, tmp_path / "r").run()
    assert not ray.is_initialized()


def test_the_placement_grace_period_is_configured_and_checked(tmp_path):
    from evomerge.executors.registry import ray_settings
    from evomerge.search_config import ConfigError, load_config

    cfg = load_config(synthetic_config(tmp_path / "a.yaml", budget=2))
    assert ray_settings(cfg).placement_timeout_s == 300  # a few minutes by default
    cfg = load_config(synthetic_config(tmp_path / "b.yaml", budget=2, placement_timeout_s=20))
    assert ray_settings(cfg).placement_timeout_s == 20
    with pytest.raises(ConfigError, match="executor.placement_timeout_s"):
        load_config(synthetic_config(tmp_path / "c.yaml", budget=2, placement_timeout_s=0))


def test_the_live_view_says_it_is_waiting_for_workers():
    """Redrawn with counts unchanged while nothing finishes (the executor's idle hook)."""
    states = ["waiting for workers: none placed for 5 s; the run stops (resumable) at 300 s",
              "worker 0: waiting for a node, 5 s", "worker 1: retired (its process died)"]
    for mode in ("tty", "plain"):
        view = io.StringIO()
        progress = Progress(mode, stream=view, every=0)
        progress.start(3, 10, "q")
        time.sleep(0.3)  # a terminal redraws at most every 0.25 s
        progress.refresh(lambda: {"workers": states})
        assert progress.line.startswith("3/10 trials"), progress.line
        progress.close()
        assert "waiting for workers: none placed for 5 s" in view.getvalue(), mode
