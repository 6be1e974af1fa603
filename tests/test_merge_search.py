"""Merge searches end to end: real sources, in-place candidates, lm-eval objectives, the run
directory (kill, resume, cache), export and bad configs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from evomerge.run.report import report
from evomerge.run.search_run import SearchRun
from evomerge.search_config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def merge_config(zoo, tasks_dir: Path, controller: dict, space: dict | None = None,
                 budget: int = 10, **task) -> dict:
    data = {
        "name": "t", "seed": 0, "budget": budget, "checkpoint_every": 3,
        "task": {
            "kind": "merge", "base": str(zoo["base"]), "sources": [str(zoo["a"]), str(zoo["b"])],
            "space": space or {"kind": "ps", "method": "ties", "groups": 2},
            "evaluators": [{"name": "skills", "kind": "lm_eval",
                            "include_path": [str(tasks_dir)],
                            "tasks": ["next_search", "echo_search"],
                            "heldout_tasks": ["next_test", "echo_test"]}],
            "objectives": [{"name": "next", "metric": "next_search/acc"},
                           {"name": "echo", "metric": "echo_search/acc"}],
            # the controllers' own behaviour; tests/test_baselines.py runs the defaults
            "baselines": [],
            **task,
        },
        "controller": controller,
    }
    return data


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def log_lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("controller", [
    {"kind": "cmaes"}, {"kind": "random"}, {"kind": "optuna", "sampler": "tpe"},
    {"kind": "optuna", "sampler": "nsga2"}], ids=lambda c: c.get("sampler", c["kind"]))
@pytest.mark.smoke
def test_each_controller_searches_a_merge_task(zoo, tasks_dir, tmp_path, controller):
    cfg = write_config(tmp_path / "c.yaml", merge_config(zoo, tasks_dir, controller, budget=6))
    state = SearchRun.create(cfg, tmp_path / "run").run()
    assert state.trials == 6
    lines = log_lines(tmp_path / "run")
    assert all(x["status"] == "ok" and set(x["objectives"]) == {"next", "echo"} for x in lines)
    assert all(len(x["genome"]) == 8 and "recipe_digest" in x for x in lines)
    assert len({x["recipe_digest"] for x in lines}) > 1  # the candidates really differ
    data = report(tmp_path / "run")
    assert data["front"] and all(set(f["heldout"]) == {"next", "echo"} for f in data["front"])


@pytest.mark.smoke
def test_m2n2_seed_mixtures_compete_on_per_sample_scores(zoo, tasks_dir, tmp_path):
    data = merge_config(zoo, tasks_dir, {"kind": "m2n2", "archive_size": 4},
                        space={"kind": "seed_mixture", "groups": 2}, budget=8,
                        sample_scores=["next_search/p_correct", "echo_search/p_correct"])
    data["task"].pop("base")
    state = SearchRun.create(write_config(tmp_path / "c.yaml", data), tmp_path / "run").run()
    assert state.trials == 8
    lines = log_lines(tmp_path / "run")
    assert [x["genome"] for x in lines[:2]] == [[1, 0, 1, 0], [0, 1, 0, 1]]  # the seeds first
    assert all(x["scores"]["n"] == 60 and "f32z" in x["scores"] for x in lines)  # continuous
    assert any(x["genome"] not in ([1, 0, 1, 0], [0, 1, 0, 1]) for x in lines[2:])  # children


def test_the_selection_cache_changes_speed_only(zoo, tasks_dir, tmp_path):
    """The same search with the selection cache on (default) and off gives the same trials."""
    from evomerge.search_config import load_config
    from evomerge.tasks.registry import build_task

    space = {"kind": "ps", "methods": ["ties", "dare_ties"], "groups": 2}
    runs = []
    for name, candidate in (("on", {}), ("off", {"selection_cache_gib": 0})):
        cfg = write_config(tmp_path / f"{name}.yaml", merge_config(
            zoo, tasks_dir, {"kind": "random"}, space=space, budget=4, candidate=candidate))
        worker = build_task(load_config(cfg)).worker()
        assert (worker.builder.cache.budget == 0) == (name == "off")
        SearchRun.create(cfg, tmp_path / name).run()
        runs.append([(x["genome"], x["objectives"]) for x in log_lines(tmp_path / name)])
    assert runs[0] == runs[1] and len(runs[0]) == 4


def test_repeated_recipes_come_from_the_cache_also_after_resume(zoo, tasks_dir, tmp_path):
    # without crossover or mutation every child copies a parent: the same recipe again
    data = merge_config(zoo, tasks_dir, {"kind": "m2n2", "archive_size": 3, "crossover": False},
                        space={"kind": "seed_mixture"}, budget=10)
    data["task"].pop("base")
    cfg = write_config(tmp_path / "c.yaml", data)
    run = SearchRun.create(cfg, tmp_path / "run")
    run.run(stop_after=5)
    SearchRun.open(tmp_path / "run").run()
    lines = log_lines(tmp_path / "run")
    assert len(lines) == 10
    hits = [x for x in lines if "cached" in x]
    assert len(hits) == 8 and all(x["seconds"] == 0 for x in hits)
    assert any(x["trial"] >= 5 for x in hits)  # the cache was rebuilt from the log
    for x in hits:
        origin = lines[x["cached"]]
        assert origin["recipe_digest"] == x["recipe_digest"]
        assert origin["objectives"] == x["objectives"]
    assert report(tmp_path / "run")["cache_hits"] == 8


def test_failing_and_nonfinite_evaluations_are_failed_trials(zoo, tasks_dir, tmp_path):
    (tmp_path / "flaky.py").write_text(
        "import math\n"
        "calls = {'n': 0}\n"
        "def score(model, tokenizer, split):\n"
        "    calls['n'] += 1\n"
        "    if calls['n'] % 3 == 1:\n"
        "        raise RuntimeError('evaluation exploded')\n"
        "    if calls['n'] % 3 == 2:\n"
        "        return {'q': math.nan}\n"
        "    return {'q': float(next(model.parameters()).sum())}\n")
    data = merge_config(zoo, tasks_dir, {"kind": "random"}, budget=9)
    data["task"]["evaluators"] = [{"name": "f", "kind": "callable", "function": "flaky:score",
                                   "python_path": [str(tmp_path)], "metrics": ["q"]}]
    data["task"]["objectives"] = [{"name": "q", "metric": "q"}]
    state = SearchRun.create(write_config(tmp_path / "c.yaml", data), tmp_path / "run").run()
    assert state.trials == 9
    lines = log_lines(tmp_path / "run")
    failed = [x for x in lines if x["status"] == "failed"]
    assert any("evaluation exploded" in x["error"] for x in failed)
    assert any("objective q: q is nan" in x["error"] for x in failed)
    front_trials = {f["trial"] for f in report(tmp_path / "run")["front"]}
    assert front_trials and not front_trials & {x["trial"] for x in failed}


@pytest.mark.parametrize("mutate, match", [
    (lambda d, z: d["task"].update(sourcez=[]), "task.sourcez: not a known key here"),
    (lambda d, z: d["task"]["sources"].append(str(z["a"]) + "-missing"),
     r"task.sources\[2\]: '.*a-missing' is not a model directory \(tried .*a-missing\)"),
    (lambda d, z: d["task"]["evaluators"][0].update(tasks=["next_search", "nope/x.yaml"]),
     r"evaluators.skills.tasks\[1\]: task file nope/x.yaml does not exist"),
    (lambda d, z: d["task"]["objectives"][1].update(metric="echo_search/f1"),
     r"task.objectives\[1\].metric: evaluator 'skills' produces no 'echo_search/f1'"),
    (lambda d, z: d["task"]["objectives"][0].update(evaluator="other"),
     r"objectives\[0\].evaluator: 'other' is not one of the evaluators"),
    (lambda d, z: d["task"]["objectives"][0].update(direction="minimize"),
     r"objectives\[0\].reference: required"),
])
def test_bad_merge_configs_fail_before_anything_runs(zoo, tasks_dir, tmp_path, mutate, match):
    data = merge_config(zoo, tasks_dir, {"kind": "random"})
    mutate(data, zoo)
    cfg = write_config(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError, match=match) as err:
        SearchRun.create(cfg, tmp_path / "run")
    assert str(err.value).startswith(str(cfg))
    assert not (tmp_path / "run").exists()


def test_sources_of_another_architecture_or_tokenizer_are_refused(zoo, tasks_dir, tmp_path):
    arch = tmp_path / "arch"
    shutil.copytree(zoo["b"], arch)
    cfg_json = json.loads((arch / "config.json").read_text())
    cfg_json["architectures"] = ["MistralForCausalLM"]
    (arch / "config.json").write_text(json.dumps(cfg_json))
    tok = tmp_path / "tok"
    shutil.copytree(zoo["b"], tok)
    tj = json.loads((tok / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    vocab["zz"], vocab["w7"] = vocab.pop("w7"), 10**6  # same size, one token renamed
    vocab["w7"] = vocab.pop("zz")
    first = next(k for k in vocab if k.startswith("w1"))
    vocab[first + "x"] = vocab.pop(first)
    (tok / "tokenizer.json").write_text(json.dumps(tj))
    for other, match in ((arch, "architecture MistralForCausalLM differs"),
                         (tok, "tokenizer differs")):
        data = merge_config(zoo, tasks_dir, {"kind": "random"})
        data["task"]["sources"][1] = str(other)
        with pytest.raises(ConfigError, match=match):
            SearchRun.create(write_config(tmp_path / "c.yaml", data), tmp_path / "run")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evomerge.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.smoke
@pytest.mark.slow
def test_demo_config_search_kill_resume_report_export(tmp_path):
    """configs/tiny_merge_ps.yaml through the CLI as a user runs it: build the zoo, search,
    SIGKILL mid-run, resume, report, export the best trial, and check that the exported
    directory loads with transformers and scores what the log says."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.evaluate.registry import build_evaluator
    from evomerge.search_config import load_config

    assert _cli("build-zoo", "zoo", cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "evomerge.cli", "search", str(ROOT / "configs" /
                                                               "tiny_merge_ps.yaml"),
           "--run-dir", str(run_dir), "--budget", "30"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        log = run_dir / "trials.jsonl"
        if log.exists() and log.read_text().count("\n") >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = log_lines(run_dir)
    assert 8 <= len(before) < 30
    res = _cli("resume", str(run_dir), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    after = log_lines(run_dir)
    assert len(after) == 30 and after[: len(before)] == before  # nothing lost or rewritten
    # nothing repeated: the 6 baselines (ids -6..-1), then the controller's 24
    assert sorted(x["id"] for x in after) == list(range(-6, 24))
    assert [x["trial"] for x in after] == list(range(30))

    rep = json.loads(_cli("report", str(run_dir), "--json", cwd=tmp_path).stdout)
    assert {"trials", "budget", "failed", "best", "front", "cache_hits"} <= set(rep)
    assert rep["trials"] == 30 and rep["failed"] == 0 and rep["front"]
    res = _cli("export", str(run_dir), "--best", "--to", "best", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "best"
    assert {"evomerge_recipe.yaml", "mergekit_config.yml", "config.json"} <= \
        {p.name for p in out.iterdir()}
    cfg = load_config(run_dir / "config.yaml")
    name = "next"  # the best is chosen on the validation split (the config has one)
    best = max((x for x in after if "validation" in x),
               key=lambda x: (x["validation"][name], -x["trial"]))
    assert rep["best"]["trial"] == best["trial"]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ev = build_evaluator(cfg.task.evaluators[0])
    got = ev.evaluate(model, tok, "search").metrics
    assert got["next_search/acc"] == best["objectives"]["next"]
    assert got["echo_search/acc"] == best["objectives"]["echo"]
    # re-merging the exported recipe gives the same tensors
    res = _cli("merge", str(out / "evomerge_recipe.yaml"), "again", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "again" /
                                                            "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_m2n2_whose_every_evaluation_fails_stops_with_the_cause(zoo, tasks_dir, tmp_path):
    """No initial member scores, so M2N2 has no parents: it asks initial members again until
    the all-failed rule stops the run, naming the evaluator's error."""
    from evomerge.run.errors import RunError

    (tmp_path / "broken.py").write_text(
        "def score(model, tokenizer, split):\n    raise RuntimeError('no GPU here')\n")
    data = merge_config(zoo, tasks_dir, {"kind": "m2n2", "archive_size": 3},
                        space={"kind": "seed_mixture", "groups": 1}, budget=30)
    data["task"].pop("base")
    data["task"]["evaluators"] = [{"name": "f", "kind": "callable", "function": "broken:score",
                                   "python_path": [str(tmp_path)], "metrics": ["q"]}]
    data["task"]["objectives"] = [{"name": "q", "metric": "q"}]
    with pytest.raises(RunError, match="no GPU here"):
        SearchRun.create(write_config(tmp_path / "c.yaml", data), tmp_path / "run").run()
    lines = log_lines(tmp_path / "run")
    assert 3 < len(lines) < 30 and all(x["status"] == "failed" for x in lines)
