"""Run directory, trial log, checkpoints and resume (docs/design.md §7)."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.run.errors import RunError
from evomerge.run.search_run import SearchRun
from evomerge.run.trial_log import as_logged, decode_scores, encode_scores

from .conftest import write_yaml

runner = CliRunner()


def config(tmp_path: Path, name: str = "cfg.yaml", task: dict | None = None,
           every: int = 50, **controller) -> Path:
    m2n2 = {"archive_size": 6, "mutation_sigma": 0.01}
    ctrl = {"kind": "m2n2", **(m2n2 if controller.get("kind", "m2n2") == "m2n2" else {}),
            **controller}
    return write_yaml(tmp_path / name, {"name": "t", "seed": 3, "budget": 400,
                                        "checkpoint_every": every, "controller": ctrl,
                                        "task": task or {"kind": "digits"}})


def trials(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines()]


def signature(lines: list[dict]) -> list[tuple]:
    return [(x["trial"], x["id"], x["fitness"], x.get("genome_digest"), x["scores"])
            for x in lines]


def test_scores_round_trip_compactly():
    import numpy as np

    bits = (np.random.default_rng(0).random(1437) > 0.5).astype(np.float32)
    enc = encode_scores(bits)
    assert len(json.dumps(enc)) < 300
    assert (decode_scores(enc) == bits).all()
    unit = np.random.default_rng(1).random(1437)  # float64, as an evaluator may return
    enc = encode_scores(unit)
    assert len(json.dumps(enc)) < 8000
    assert np.array_equal(decode_scores(enc), unit.astype(np.float32))  # lossless at float32
    wide = np.linspace(-3, 7, 11)
    for s in (bits, unit, wide):  # what the controller is told is exactly what replay reads
        assert np.array_equal(as_logged(s), decode_scores(encode_scores(s)))


@pytest.mark.parametrize("controller,task", [
    ({"kind": "m2n2"}, None),
    # continuous scores: replay must see the very values the live run was told
    ({"kind": "m2n2", "sample_reward": "best"}, {"kind": "digits", "scores": "p_correct"}),
    ({"kind": "cmaes", "separable": True, "sigma0": 0.01, "popsize": 12}, None),
])
@pytest.mark.smoke
def test_interrupted_serial_run_replays_the_same_trial_sequence(tmp_path, controller, task):
    cfg = config(tmp_path, task=task, **controller)
    # checkpointed at every boundary, which changes no decision: its state at each trial
    whole = SearchRun.create(config(tmp_path, "every.yaml", task, 1, **controller),
                             tmp_path / "whole")
    whole.run(stop_after=150)
    parts = SearchRun.create(cfg, tmp_path / "parts")
    parts.run(stop_after=137)  # stops between checkpoints, mid-generation for CMA-ES
    # what a kill in flight leaves: a torn last line and no checkpoint for the last trials
    with open(tmp_path / "parts" / "trials.jsonl", "a") as f:
        f.write('{"trial": 137, "id": 13')
    SearchRun.open(tmp_path / "parts").run(stop_after=13)
    # the last checkpoints (150; CMA-ES: 144, the last generation boundary, which the
    # resumed run checkpoints at because it ends the replay) hold the same state to the bit
    ckpts = [pickle.loads((tmp_path / d / "checkpoint.pkl").read_bytes())
             for d in ("whole", "parts")]
    assert ckpts[0]["trials"] == ckpts[1]["trials"] == (144 if "popsize" in controller
                                                        else 150)
    assert state_fingerprint(ckpts[0]["controller"]) == \
        state_fingerprint(ckpts[1]["controller"])
    for d in ("whole", "parts"):
        SearchRun.open(tmp_path / d).run()
    a, b = trials(tmp_path / "whole"), trials(tmp_path / "parts")
    assert len(a) == len(b) == 400
    assert signature(a) == signature(b)


def state_fingerprint(state: dict) -> bytes:
    """The search state that decides future proposals (pycma's own pickle also holds timers)."""
    if "genomes" in state:  # m2n2
        return pickle.dumps((state["scores"], state["genomes"], state["rng"]))
    inner = pickle.loads(state["blob"])  # cmaes
    es = inner["es"]
    return pickle.dumps((inner["next_id"], es.mean, es.sigma, es.sm.variances,
                         inner["_np_state"]))


def test_resume_refuses_a_changed_config_but_accepts_a_larger_budget(tmp_path):
    cfg = config(tmp_path)
    res = runner.invoke(app, ["search", str(cfg), "--run-dir", str(tmp_path / "r"),
                              "--budget", "120"])
    assert res.exit_code == 0, res.output
    frozen = tmp_path / "r" / "config.yaml"
    text = frozen.read_text()
    frozen.write_text(text.replace("alpha: 1.0", "alpha: 2.0"))
    res = runner.invoke(app, ["resume", str(tmp_path / "r")])
    assert res.exit_code != 0 and "config.yaml" in res.output and "changed" in res.output
    frozen.write_text(text)
    res = runner.invoke(app, ["resume", str(tmp_path / "r"), "--budget", "100"])
    assert res.exit_code != 0 and "--budget" in res.output
    other = config(tmp_path, "other.yaml", alpha=0.5)
    res = runner.invoke(app, ["search", str(other), "--run-dir", str(tmp_path / "r")])
    assert res.exit_code != 0 and "different config" in res.output
    res = runner.invoke(app, ["resume", str(tmp_path / "r"), "--budget", "200"])
    assert res.exit_code == 0, res.output
    assert len(trials(tmp_path / "r")) == 200
    rep = json.loads(runner.invoke(app, ["report", str(tmp_path / "r"), "--json"]).output)
    assert rep["trials"] == 200 and rep["budget"] == 200
    best = rep["best"]
    lines = trials(tmp_path / "r")
    assert best["objectives"]["accuracy"] == max(x["objectives"]["accuracy"] for x in lines)
    assert 0 < best["heldout"]["accuracy"] <= 1
    assert rep["front"] and rep["front"][0]["trial"] == best["trial"]


# serial digits; and 8 simulated workers, whose trials finish out of the order they were asked
# in and whose checkpoints come every 100 trials, not after each
KILLED_RUNS = {
    "serial": {"budget": 1500, "controller": {"kind": "m2n2", "archive_size": 8,
                                              "mutation_sigma": 0.01}},
    "8 workers": {"budget": 6000, "controller": {"kind": "m2n2", "archive_size": 8},
                  "executor": {"kind": "simulated", "workers": 8},
                  "task": {"kind": "synthetic", "dimension": 6, "median_seconds": 1.0}},
}


@pytest.mark.parametrize("shape", sorted(KILLED_RUNS))
def test_sigkill_at_a_random_moment_loses_no_finished_evaluation(tmp_path, shape):
    budget = KILLED_RUNS[shape]["budget"]
    cfg = write_yaml(tmp_path / "k.yaml", {"name": "k", "seed": 1, "checkpoint_every": 100,
                                           **KILLED_RUNS[shape]})
    run_dir = tmp_path / "k"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "evomerge.cli", "search", str(cfg), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = run_dir / "trials.jsonl"
    deadline = time.monotonic() + 60
    while (not log.exists() or log.stat().st_size < 50_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    raw = log.read_bytes()
    before = [json.loads(x) for x in raw[: raw.rfind(b"\n") + 1].splitlines()]
    assert 0 < len(before) < budget, "the kill should land mid-run"
    res = subprocess.run([sys.executable, "-m", "evomerge.cli", "resume", str(run_dir)],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    after = trials(run_dir)
    assert [x["trial"] for x in after] == list(range(budget))
    assert len({x["id"] for x in after}) == budget
    assert signature(after[: len(before)]) == signature(before)


def test_resume_refuses_a_log_the_controller_cannot_replay(tmp_path):
    run = SearchRun.create(config(tmp_path), tmp_path / "r")
    run.run(stop_after=70)  # checkpoint at 50, trials 50..69 only in the log
    log = tmp_path / "r" / "trials.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    for x in lines[50:]:
        x["id"] += 10_000  # as if another run's trials had been appended
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(RunError, match="no longer proposes"):
        SearchRun.open(tmp_path / "r").run()


@pytest.mark.parametrize("init_members,pending", [(None, 2), (2, 0)])
def test_init_members_sets_how_many_random_members_start_the_archive(tmp_path, init_members,
                                                                       pending):
    """natural_niches starts from 2 members and lets children fill the empty slots."""
    task = {"kind": "digits", "init_members": init_members}
    run = SearchRun.create(config(tmp_path, task=task), tmp_path / "run", budget=4)
    run.run()
    state = pickle.loads((tmp_path / "run" / "checkpoint.pkl").read_bytes())["controller"]
    assert len(state["pending_initial"]) == pending  # archive_size 6: 6 initial by default
    assert len(state["genomes"]) == 4  # not full yet: nothing evicted


def test_cmaes_cut_by_the_budget_resumes_to_a_larger_one_without_repeating(tmp_path):
    """The last generation was cut short by the budget: its trials replay from the log,
    they are not asked and evaluated again."""
    cfg = config(tmp_path, kind="cmaes", separable=True, popsize=12)
    run = SearchRun.create(cfg, tmp_path / "r", budget=30)  # 2.5 generations
    run.run()
    SearchRun.open(tmp_path / "r", budget=60).run()
    lines = trials(tmp_path / "r")
    assert [x["trial"] for x in lines] == list(range(60))
    assert len({x["id"] for x in lines}) == 60


def test_resume_refuses_a_logged_trial_of_another_genome(tmp_path):
    run = SearchRun.create(config(tmp_path), tmp_path / "r")
    run.run(stop_after=70)  # checkpoint at 50; trials 50..69 replay from the log
    log = tmp_path / "r" / "trials.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    lines[55]["genome_digest"] = "0" * 16  # logged for some other genome
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(RunError, match="trial 55 .* was logged for another genome"):
        SearchRun.open(tmp_path / "r").run()


def test_a_config_diff_names_what_the_two_controllers_read(tmp_path):
    """Another controller's defaults are no difference: the kind comes first."""
    from evomerge.run.search_run import config_diff
    from evomerge.search_config import load_config

    optuna = load_config(config(tmp_path, "a.yaml", kind="optuna"))
    cmaes = load_config(config(tmp_path, "b.yaml", kind="cmaes"))
    diff = config_diff(optuna, cmaes)
    assert diff.startswith("controller.kind: 'optuna' in the run, 'cmaes' here")
    assert "archive_size" not in diff and "alpha" not in diff
    m2n2 = load_config(config(tmp_path, "d.yaml"))  # archive_size 6: m2n2's, not optuna's
    assert "archive_size" not in config_diff(optuna, m2n2)
    tpe = load_config(config(tmp_path, "c.yaml", kind="optuna", sampler="nsga2"))
    assert config_diff(optuna, tpe) == "controller.sampler: 'tpe' in the run, 'nsga2' here"


def test_resume_counts_the_logged_trials_as_done(tmp_path):
    """The progress line starts from what the log holds, as the interrupted run said it
    saved, not from the last checkpoint."""
    import io

    from evomerge.progress import Progress

    SearchRun.create(config(tmp_path), tmp_path / "r").run(stop_after=75)  # checkpoint at 50
    assert len(trials(tmp_path / "r")) == 75
    stream = io.StringIO()
    SearchRun.open(tmp_path / "r").run(stop_after=1, progress=Progress("plain", stream))
    assert stream.getvalue().startswith("75/400 trials done")
