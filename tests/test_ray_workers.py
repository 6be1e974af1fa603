"""Ray workers on real actors: every worker busy, failures survived (a killed worker, a
raising or NaN evaluation, a timeout, every worker failing, a killed driver), trial lines
with worker and node, and a two-node cluster joined with --address."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.run.report import report
from evomerge.run.search_run import SearchRun

from .conftest import write_yaml

ray = pytest.importorskip("ray")
runner = CliRunner()
EXE = str(Path(sys.executable).parent / "evomerge")

EVALUATOR = '''
import math, os, pathlib, time

calls = {"n": 0}

def score(model, tokenizer, split, flags, delay=0.3):
    """Scores a live candidate slowly, misbehaving as the flag files in `flags` say."""
    calls["n"] += 1
    d = pathlib.Path(flags)
    busy = d / f"busy-{os.getpid()}"
    busy.write_text("x")  # a test may kill this process now
    try:
        if (d / "hang-always").exists():
            time.sleep(120)
        try:
            (d / "hang-once").rename(d / "hung")  # exactly one evaluation hangs
            time.sleep(120)
        except FileNotFoundError:
            pass
        time.sleep(delay)
    finally:
        busy.unlink(missing_ok=True)
    if (d / "misbehave").exists() and calls["n"] % 4 == 1:
        raise RuntimeError("evaluation exploded")
    if (d / "misbehave").exists() and calls["n"] % 4 == 2:
        return {"q": math.nan}
    return {"q": float(next(model.parameters()).float().abs().sum())}
'''


@pytest.fixture()
def slow_search(tmp_path, zoo):
    """A merge search config scored by a slow callable; returns (make_config, flags dir)."""
    (tmp_path / "slow_eval.py").write_text(EVALUATOR)
    flags = tmp_path / "flags"
    flags.mkdir()

    def make(budget: int = 12, workers: int = 2, **executor) -> Path:
        return write_yaml(tmp_path / "cfg.yaml", {
            "name": "ray", "seed": 0, "budget": budget, "checkpoint_every": 4,
            "controller": {"kind": "random"},
            "executor": {"kind": "ray", "workers": workers, **executor},
            "task": {"kind": "merge", "sources": [str(zoo["a"]), str(zoo["b"])],
                     "space": {"kind": "seed_mixture"},
                     "evaluators": [{"name": "slow", "kind": "callable",
                                     "function": "slow_eval:score", "metrics": ["q"],
                                     "python_path": [str(tmp_path)],
                                     "options": {"flags": str(flags)}}],
                     "objectives": [{"name": "q", "metric": "q"}]}})
    return make, flags


def lines_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines()]


def assert_complete(run_dir: Path, budget: int) -> list[dict]:
    lines = lines_of(run_dir)
    assert [x["trial"] for x in lines] == list(range(budget))
    assert len({x["id"] for x in lines}) == budget  # nothing lost, nothing twice
    return lines


@pytest.mark.smoke
def test_workers_share_the_search_and_log_worker_node_and_waits(tmp_path, slow_search):
    make, _ = slow_search
    res = runner.invoke(app, ["search", str(make(budget=10)), "--run-dir",
                              str(tmp_path / "r"), "-q"])
    assert res.exit_code == 0, res.output
    lines = assert_complete(tmp_path / "r", 10)
    assert all(x["status"] == "ok" for x in lines)
    assert {x["worker"] for x in lines} == {0, 1}
    assert all(len(x["node"]) > 8 and x["queue_seconds"] >= 0 for x in lines)
    rep = report(tmp_path / "r")
    assert rep["workers"]["count"] == 2 and 0.5 < rep["workers"]["utilisation"] <= 1.0
    assert "worker utilisation" in runner.invoke(app, ["report", str(tmp_path / "r")]).output


def test_a_killed_worker_is_replaced_and_its_candidate_rerun(tmp_path, slow_search, caplog):
    make, flags = slow_search
    cfg = make(budget=12)
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            log = tmp_path / "r" / "trials.jsonl"
            busy = list(flags.glob("busy-*"))
            if log.exists() and len(log.read_text().splitlines()) >= 3 and busy:
                pid = int(busy[0].name.split("-")[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    with caplog.at_level(logging.WARNING):
        SearchRun.create(cfg, tmp_path / "r").run()
    thread.join()
    assert killed, "no evaluation was caught in flight"
    lines = assert_complete(tmp_path / "r", 12)
    assert all(x["status"] == "ok" for x in lines)  # the interrupted candidate ran again
    assert "replaced: its process died" in caplog.text


def test_raising_and_nan_evaluations_fail_their_trials_and_workers_stay(tmp_path, slow_search,
                                                                         caplog):
    make, flags = slow_search
    (flags / "misbehave").write_text("x")
    with caplog.at_level(logging.WARNING):
        SearchRun.create(make(budget=16), tmp_path / "r").run()
    lines = assert_complete(tmp_path / "r", 16)
    raised = [x for x in lines if "evaluation exploded" in (x.get("error") or "")]
    nans = [x for x in lines if "q is nan" in (x.get("error") or "")]
    assert raised and nans and all(x["status"] == "failed" for x in raised + nans)
    front = {e["trial"] for e in report(tmp_path / "r")["front"]}
    assert not front & {x["trial"] for x in raised + nans}
    assert "replaced" not in caplog.text and "retired" not in caplog.text


# Timeouts in the tests below are far past a normal evaluation (~0.3 s here, up to a few
# seconds on a loaded machine) and far below the hung one (120 s): the count of timed-out
# trials does not depend on how busy the machine is.
TIMEOUT_S = 10


def test_an_evaluation_past_its_timeout_fails_and_its_worker_is_recycled(tmp_path,
                                                                          slow_search):
    make, flags = slow_search
    (flags / "hang-once").write_text("x")
    SearchRun.create(make(budget=8, timeout_s=TIMEOUT_S), tmp_path / "r").run()
    lines = assert_complete(tmp_path / "r", 8)
    timed_out = [x for x in lines if x["status"] == "failed"]
    assert len(timed_out) == 1 and f"timed out after {TIMEOUT_S} s" in timed_out[0]["error"]
    assert "recycled" in timed_out[0]["error"]


def test_when_every_worker_is_retired_the_run_stops_resumable(tmp_path, slow_search):
    make, flags = slow_search
    cfg = make(budget=8, timeout_s=TIMEOUT_S, max_failures=1)
    (flags / "hang-always").write_text("x")
    res = runner.invoke(app, ["search", str(cfg), "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "no worker left" in res.output and "retired" not in res.output.split("\n")[-1]
    assert f"continue with: evomerge resume {tmp_path / 'r'}" in res.output
    (flags / "hang-always").unlink()
    res = runner.invoke(app, ["resume", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 0, res.output
    lines = assert_complete(tmp_path / "r", 8)
    assert sum(x["status"] == "failed" for x in lines) == 2  # the two timed-out trials


def test_a_killed_driver_resumes_without_loss_or_duplicates(tmp_path, slow_search):
    import psutil

    make, _ = slow_search
    cfg = make(budget=24)
    proc = subprocess.Popen([EXE, "search", str(cfg), "--run-dir", str(tmp_path / "r"), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "r" / "trials.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for child in children:  # the Ray it started, now orphaned
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    done = len(lines_of(tmp_path / "r"))
    assert 6 <= done < 24
    res = runner.invoke(app, ["resume", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 0, res.output
    assert_complete(tmp_path / "r", 24)


@pytest.mark.slow
def test_a_two_node_cluster_runs_the_demo_config_through_address(tmp_path, monkeypatch):
    """`ray start --head` and a second `ray start --address` with their own resources and
    temp dirs; the shipped demo config runs there unchanged and both nodes evaluate."""
    import socket

    import psutil

    from evomerge.models.tiny import build_example_zoo

    monkeypatch.chdir(tmp_path)
    build_example_zoo(tmp_path / "zoo", "tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    dirs = [Path(f"/tmp/evm-{os.getpid()}-{i}") for i in (1, 2)]  # short: socket path limits
    try:
        subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--num-cpus", "1",
                        "--resources", '{"nodeA": 1}', "--temp-dir", str(dirs[0]),
                        "--include-dashboard=false", "--disable-usage-stats"],
                       check=True, capture_output=True, env=env, timeout=120)
        subprocess.run([ray_cli, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                        "--resources", '{"nodeB": 1}', "--temp-dir", str(dirs[1]),
                        "--disable-usage-stats"],
                       check=True, capture_output=True, env=env, timeout=120)
        root = Path(__file__).resolve().parent.parent
        res = subprocess.run([EXE, "search", str(root / "configs" / "tiny_merge_ps.yaml"),
                              "--run-dir", "run", "--budget", "9", "--workers", "2",
                              "--address", f"127.0.0.1:{port}", "-q"],
                             capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        lines = assert_complete(tmp_path / "run", 9)  # its 6 baselines and 3 trials
        # trials ran on both nodes (a start the recipe cache answered ran nowhere)
        assert len({x["node"] for x in lines if "cached" not in x}) == 2
    finally:  # what those two `ray start` launched (agents rename themselves: take children)
        ours = []
        for p in psutil.process_iter(["cmdline"]):
            if any(str(d) in " ".join(p.info["cmdline"] or []) for d in dirs):
                try:
                    ours += [p, *p.children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
        for p in ours:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(ours, timeout=30)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_cuda_candidates_get_one_gpu_per_actor_up_to_the_device(tmp_path, slow_search):
    """The CUDA path on a CPU machine: settings, the actor's device, and the actor's own
    clear refusal when the machine has no CUDA (GPU runs: results/ when a device is lent)."""
    import yaml

    from evomerge.executors.ray_executor import actor_config
    from evomerge.executors.registry import ray_settings
    from evomerge.search_config import load_config

    make, _ = slow_search
    data = yaml.safe_load(make(budget=4).read_text())
    data["task"]["candidate"] = {"device": "cuda:1"}
    cfg = load_config(write_yaml(tmp_path / "gpu.yaml", data))
    assert ray_settings(cfg).gpus_per_worker == 1.0
    assert actor_config(cfg.model_dump(mode="json")).task.candidate.device == "cuda"
    if torch_cuda():
        pytest.skip("this machine has CUDA: the refusal below is for CPU machines")
    res = runner.invoke(app, ["search", str(tmp_path / "gpu.yaml"), "--run-dir",
                              str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "worker 0 could not start" in res.output and "CUDA is not available" in res.output
    assert not (tmp_path / "r").exists()


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
