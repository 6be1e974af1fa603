"""Runs mirrored to MLflow (issue 25, part 2), against a real local MLflow store read back
with MLflow's own client: params, metrics stepped by trial, artifacts, one MLflow run across
a resume, and a tracker that never blocks or fails the search."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from evomerge.errors import ConfigError
from evomerge.run.search_run import SearchRun
from evomerge.tracking import mlflow_tracker

from .conftest import write_yaml

mlflow = pytest.importorskip("mlflow")  # the `tracking` extra (in the test extra)


def config(tmp_path: Path, tracking: dict | None = None, budget: int = 24) -> Path:
    return write_yaml(tmp_path / "c.yaml", {
        "name": "tracked", "seed": 1, "budget": budget, "checkpoint_every": 5,
        "task": {"kind": "synthetic", "dimension": 4, "median_seconds": 0},
        "controller": {"kind": "random"},
        "tracking": tracking if tracking is not None else {"mlflow": {}}})


def client_of(run: Path):
    from mlflow.tracking import MlflowClient

    saved = json.loads((run / "mlflow_run.json").read_text())
    return MlflowClient(tracking_uri=saved["uri"]), saved["run_id"]


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]


@pytest.mark.smoke  # on the newest mlflow / peft too (.ci/run step 3)
def test_a_run_is_one_mlflow_run_across_a_resume(tmp_path):
    run = tmp_path / "run"
    SearchRun.create(config(tmp_path), run).run(stop_after=9)
    client, run_id = client_of(run)
    assert client.get_run(run_id).info.status == "KILLED"  # stopped, resumable
    assert steps(client, run_id, "trial_seconds") == list(range(9))
    SearchRun.open(run).run()
    client, again = client_of(run)
    assert again == run_id
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.info.experiment_id == client.get_experiment_by_name("tracked").experiment_id
    # the config as params, the objectives as metrics stepped by trial number, once each
    assert got.data.params["budget"] == "24" and got.data.params["controller.kind"] == "random"
    assert got.data.params["task.dimension"] == "4"
    assert steps(client, run_id, "trial_seconds") == list(range(24))
    history = {m.step: m.value for m in client.get_metric_history(run_id, "search/score")}
    assert history == {x["trial"]: pytest.approx(x["objectives"]["score"])
                       for x in lines(run) if x["status"] == "ok"}
    test = {m.step: m.value for m in client.get_metric_history(run_id, "test/score")}
    assert test and all(v == pytest.approx(x["heldout"]["score"]) for x in lines(run)
                        if "heldout" in x for s, v in test.items() if s == x["trial"])
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.txt", "plots"} <= names
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run_id, "plots"))
    report = Path(client.download_artifacts(run_id, "report.txt", str(tmp_path)))
    assert "24 trial" in report.read_text()
    # the store and the artifacts live inside the run directory
    assert (run / "mlflow.db").exists() and (run / "mlflow-artifacts").is_dir()


def test_trials_a_lagging_tracker_dropped_are_sent_by_the_resume(tmp_path, monkeypatch,
                                                                   capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(mlflow_tracker, "QUEUE_LIMIT", 1)  # nearly every update is dropped
    SearchRun.create(config(tmp_path), run).run(stop_after=12)
    assert "dropped" in capsys.readouterr().err
    client, run_id = client_of(run)
    assert len(steps(client, run_id, "trial_seconds")) < 12
    monkeypatch.setattr(mlflow_tracker, "QUEUE_LIMIT", 100_000)
    SearchRun.open(run).run()
    assert steps(client, run_id, "trial_seconds") == list(range(24))  # each exactly once


def test_an_unreachable_tracking_server_neither_blocks_nor_fails_the_search(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = config(tmp_path, {"mlflow": {"uri": "http://127.0.0.1:9", "experiment": "x"}})
    state = SearchRun.create(cfg, tmp_path / "run").run()
    assert state.trials == 24 and len(lines(tmp_path / "run")) == 24
    err = capsys.readouterr().err
    assert err.count("MLflow tracking stopped (http://127.0.0.1:9)") == 1, err
    assert "the search goes on" in err


def test_tracking_options_are_checked_before_anything_runs(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="tracking.mlfow"):
        SearchRun.create(config(tmp_path, {"mlfow": {}}), tmp_path / "a")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"tracking.mlflow: needs the mlflow package"):
        SearchRun.create(config(tmp_path), tmp_path / "b").run()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_merge_run_attaches_its_best_recipe(zoo, tasks_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from evomerge.recipe_file import load_recipe

    from .test_merge_search import merge_config, write_config

    data = merge_config(zoo, tasks_dir, {"kind": "random"}, budget=5)
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    data["tracking"] = {"mlflow": {"uri": uri, "experiment": "merges"}}
    SearchRun.create(write_config(tmp_path / "m.yaml", data), tmp_path / "run").run()
    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("merges").experiment_id])
    assert found.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(found.info.run_id, "best")}
    assert names == {"best/evomerge_recipe.yaml", "best/mergekit_config.yml"}
    local = Path(client.download_artifacts(found.info.run_id, "best", str(tmp_path / "dl")))
    recipe = load_recipe(local / "evomerge_recipe.yaml")
    best = json.loads((tmp_path / "run" / "state.json").read_text())
    logged = {x["trial"]: x for x in lines(tmp_path / "run")}
    chosen = [x for x in logged.values() if x.get("recipe_digest") == recipe.digest()]
    assert chosen, (recipe.digest(), best)
    assert yaml.safe_load((local / "mergekit_config.yml").read_text())["merge_method"] == "ties"
