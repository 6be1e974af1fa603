"""The simulated executor: N workers on a discrete-event clock (docs/design.md §2.2). Its
order is exact, it never sleeps, its log reads like a Ray run's, and runs on it resume."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import yaml

from evomerge.benchmarking import worker_utilisation
from evomerge.executors.base import Job
from evomerge.executors.simulated import SimulatedExecutor
from evomerge.run.errors import RunError
from evomerge.run.search_run import SearchRun
from evomerge.search_config import ConfigError, SearchConfig
from evomerge.tasks.base import SimulatedWorker


class Fixed(SimulatedWorker):
    """Each payload is its own duration; the score is the payload."""

    def seconds(self, payload, split, fraction=1.0):
        return payload

    def evaluate(self, payload, split, fraction=1.0):
        if payload < 0:
            raise ValueError("negative")
        return {"y": float(payload)}, None, {}


def test_jobs_finish_in_virtual_time_order_on_free_workers():
    ex = SimulatedExecutor(Fixed(), workers=2)
    for i, d in enumerate([5.0, 1.0, 1.0, 2.0]):
        ex.submit(Job(i, d))
    order = []
    while ex.running():
        job, out = ex.wait()
        order.append((job.candidate_id, ex.now, out.extra["worker"], out.extra["started"]))
    # 0 on worker 0 from t=0 to 5; 1 on worker 1 to 1; then 2 (1..2), then 3 (2..4)
    assert order == [(1, 1.0, 1, 0.0), (2, 2.0, 1, 1.0), (3, 4.0, 1, 2.0), (0, 5.0, 0, 0.0)]
    assert ex.busy_seconds == 9.0


def test_a_failing_job_is_an_outcome_not_an_exception():
    ex = SimulatedExecutor(Fixed(), workers=1)
    ex.submit(Job(0, -1.0))
    _, out = ex.wait()
    assert out.status == "failed" and "cost model gave -1.0" in out.error


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def synthetic(controller, workers, budget=120, every=5, **task):
    return {"budget": budget, "seed": 1, "checkpoint_every": every, "controller": controller,
            "executor": {"kind": "simulated", "workers": workers},
            "task": {"kind": "synthetic", "dimension": 6, "median_seconds": 1.0, "tail": 1.0,
                     **task}}


def lines_of(run):
    return [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("controller", [{"kind": "cmaes"}, {"kind": "random"},
                                        {"kind": "m2n2", "archive_size": 6}])
def test_a_run_on_simulated_workers_keeps_them_busy(tmp_path, controller):
    cfg = write(tmp_path / "c.yaml", synthetic(controller, 8))
    SearchRun.create(cfg, tmp_path / "r").run()
    lines = lines_of(tmp_path / "r")
    assert len(lines) == 120 and {x["worker"] for x in lines} == set(range(8))
    # heavy-tailed times (median 1 s) and no sleeping: the virtual span is long
    assert max(x["started"] + x["seconds"] for x in lines) > 10
    assert worker_utilisation(lines, 8)[0] > 0.9  # asynchronous CMA-ES too (the default with 8)


def test_generational_cmaes_idles_simulated_workers(tmp_path):
    cfg = write(tmp_path / "c.yaml", synthetic({"kind": "cmaes", "asynchronous": False}, 8))
    SearchRun.create(cfg, tmp_path / "r").run()
    assert worker_utilisation(lines_of(tmp_path / "r"), 8)[0] < 0.6


def test_the_same_config_gives_the_same_log(tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = write(tmp_path / f"{name}.yaml", synthetic({"kind": "cmaes"}, 4, budget=40))
        SearchRun.create(cfg, tmp_path / name).run()
        runs.append([{k: x[k] for k in ("id", "genome", "objectives", "started", "worker")}
                     for x in lines_of(tmp_path / name)])
    assert runs[0] == runs[1]


def test_a_stopped_asynchronous_run_resumes_on_simulated_workers(tmp_path):
    cfg = write(tmp_path / "c.yaml", synthetic({"kind": "cmaes"}, 4, budget=60))
    run = tmp_path / "r"
    SearchRun.create(cfg, run).run(stop_after=23)
    SearchRun.open(run).run()
    lines = lines_of(run)
    assert [x["trial"] for x in lines] == list(range(60))
    assert len({x["id"] for x in lines}) == 60


def controller_state(run):
    ckpt = pickle.loads((run / "checkpoint.pkl").read_bytes())
    out = sorted((c.id, c.genome.tobytes()) for c in ckpt["outstanding"])
    return ckpt["trials"], ckpt["controller"], out


@pytest.mark.parametrize("controller", [{"kind": "cmaes"}, {"kind": "m2n2", "archive_size": 6},
                                        {"kind": "optuna"}])
def test_resume_tells_the_logged_trials_in_the_order_they_finished(tmp_path, controller):
    """Several workers finish out of the order they were asked in; a run killed between
    checkpoints replays its logged trials in finishing order, so the controller ends the
    replay in the state the live run had at that trial, candidates out included."""
    live = tmp_path / "live"  # a checkpoint after every trial: its state at trial 60
    SearchRun.create(write(tmp_path / "a.yaml", synthetic(controller, 4, every=1)), live
                     ).run(stop_after=60)
    run = tmp_path / "r"  # checkpoints at 25 and 50; trials 50-59 only in the log
    SearchRun.create(write(tmp_path / "b.yaml", synthetic(controller, 4, every=25)), run
                     ).run(stop_after=60)
    lines = lines_of(run)
    assert [x["id"] for x in lines] == [x["id"] for x in lines_of(live)]
    assert [x["id"] for x in lines[50:]] != sorted(x["id"] for x in lines[50:])
    assert controller_state(run)[0] == 50
    SearchRun.open(run).run(stop_after=1)  # the replay ends in a checkpoint at trial 60
    (trials, state, out), (_, live_state, live_out) = controller_state(run), \
        controller_state(live)
    assert trials == 60 and out == live_out
    if controller["kind"] == "optuna":  # the study is its journal, cut to the same length
        assert state["journal_bytes"] == live_state["journal_bytes"]
    else:
        assert state_fingerprint(state) == state_fingerprint(live_state)


def test_a_log_missing_a_trial_is_refused_by_name_not_waited_on(tmp_path):
    """Replay tells the logged trials in their numbers' order; a line cut out of the middle
    would leave it waiting for that number: it stops with an error naming it."""
    run = tmp_path / "r"
    SearchRun.create(write(tmp_path / "c.yaml", synthetic({"kind": "m2n2", "archive_size": 6},
                                                          4, every=25)), run).run(stop_after=60)
    log = run / "trials.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:55] + lines[56:]))  # trial 55 gone, 56-59 kept
    with pytest.raises(RunError, match="no line of the log is trial 55, later ones are"):
        SearchRun.open(run).run()


def state_fingerprint(state):
    """What decides the next proposals, each part pickled (pycma's own pickle also holds
    timers)."""
    if "genomes" in state:  # m2n2
        parts = state["scores"], state["genomes"], state["rng"]
    else:
        inner = pickle.loads(state["blob"])
        es = inner["es"]
        parts = (inner["next_id"], es.mean, es.sigma, es.sm.variances, inner["_np_state"],
                 inner.get("generation"))
    return [pickle.dumps(x) for x in parts]


def test_any_task_runs_with_drawn_times(tmp_path):
    """digits has no cost model: `median_seconds` draws its evaluation times."""
    data = {"budget": 30, "seed": 2, "controller": {"kind": "cmaes", "separable": True,
                                                      "sigma0": 0.01, "step_size": "csa"},
            "executor": {"kind": "simulated", "workers": 4, "median_seconds": 2.0},
            "task": {"kind": "digits", "init": "scratch", "init_sigma": 0.01}}
    SearchRun.create(write(tmp_path / "c.yaml", data), tmp_path / "r").run()
    lines = lines_of(tmp_path / "r")
    assert len(lines) == 30 and {x["worker"] for x in lines} == set(range(4))
    assert 0.5 < np.median([x["seconds"] for x in lines]) < 8
    with pytest.raises(ValueError, match="median_seconds: an option of the simulated"):
        SearchConfig.model_validate({**data, "executor": {"kind": "ray", "median_seconds": 1}})


def test_a_task_without_a_cost_model_is_refused(tmp_path):
    data = {"budget": 5, "controller": {"kind": "random"},
            "executor": {"kind": "simulated", "workers": 2}, "task": {"kind": "digits"}}
    cfg = SearchConfig.model_validate(data)
    from evomerge.executors.registry import make_executor
    from evomerge.tasks.registry import build_task

    with pytest.raises(ConfigError, match="simulated needs a task with a cost model"):
        make_executor(cfg, build_task(cfg, prepare=False), "c.yaml")


def test_a_simulated_worker_skips_the_sleep():
    cfg = SearchConfig.model_validate(synthetic({"kind": "random"}, 2, budget=1,
                                                median_seconds=1e6))
    from evomerge.tasks.registry import build_task

    worker = build_task(cfg).simulated_worker()
    genome = np.full(6, 0.5)
    objectives, scores, _ = worker.evaluate(genome, "search")  # would sleep for days
    assert scores.shape == (6,) and worker.seconds(genome, "search") > 1000
    assert worker.seconds(genome, "search", 0.5) == pytest.approx(
        worker.seconds(genome, "search") / 2)
