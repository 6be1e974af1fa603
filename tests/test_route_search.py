"""Data-flow searches end to end through `evomerge search`: DFS over two zoo models and PS+DFS
(a parameter-space search's best model as model A), scored by lm-eval, exported as stock
checkpoints that carry their route."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.merge.routed import RouteBuilder
from evomerge.run.report import report
from evomerge.run.search_run import SearchRun
from evomerge.search_config import ConfigError

from .test_merge_search import log_lines, merge_config, write_config


def dfs_config(zoo, tasks_dir, sources, space=None, controller=None, budget=8) -> dict:
    data = merge_config(zoo, tasks_dir, controller or {"kind": "cmaes", "popsize": 4},
                        space=space or {"kind": "dfs", "repeats": 2}, budget=budget)
    data["task"].pop("base")
    data["task"]["sources"] = [str(s) for s in sources]
    return data


def test_dfs_search_scores_routes_and_exports_them(zoo, tasks_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", dfs_config(zoo, tasks_dir, [zoo["a"], zoo["b"]]))
    res = CliRunner().invoke(app, ["search", str(cfg), "--run-dir", str(tmp_path / "run"),
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    lines = log_lines(tmp_path / "run")
    assert len(lines) == 8
    assert all(x["status"] == "ok" for x in lines), [x.get("error") for x in lines]
    # 2 models x 3 layers x 2 repeats indicators + 6 x 6 pair scales
    assert all(len(x["genome"]) == 12 + 36 for x in lines)
    assert len({x["recipe_digest"] for x in lines}) > 1
    data = report(tmp_path / "run")
    assert data["front"] and all(e["recipe"].startswith("route 0.0 ") for e in data["front"])
    assert data["seconds"]["wall"] > 0 and len(data["plots"]) == 3
    text = CliRunner().invoke(app, ["report", str(tmp_path / "run")]).output
    assert "recipe" in text and "hops)" in text and "plots: " in text
    res = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--best",
                                   "--to", str(tmp_path / "best")])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    hops = config["evomerge_route"]["hops"]
    assert config["num_hidden_layers"] == len(hops) and hops[0][:2] == [0, 0]
    # the exported checkpoint is the model the search scored
    from transformers import AutoModelForCausalLM

    from evomerge.recipe_file import load_recipe

    recipe = load_recipe(tmp_path / "best" / "evomerge_recipe.yaml")
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        runtime = RouteBuilder([str(zoo["a"]), str(zoo["b"])]).build(recipe)(ids).logits
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "best")(ids).logits
    assert torch.allclose(runtime, exported, atol=1e-5, rtol=1e-5)


def test_ps_then_dfs_routes_through_the_ps_winner(zoo, tasks_dir, tmp_path):
    ps = write_config(tmp_path / "ps.yaml", merge_config(zoo, tasks_dir, {"kind": "random"},
                                                         budget=3))
    SearchRun.create(ps, tmp_path / "ps_run").run()
    res = CliRunner().invoke(app, ["export", str(tmp_path / "ps_run"), "--best",
                                   "--to", str(tmp_path / "ps_best")])
    assert res.exit_code == 0, res.output
    data = dfs_config(zoo, tasks_dir, [tmp_path / "ps_best", zoo["c"]],
                      space={"kind": "dfs", "repeats": 2, "scale_mode": "slot"},
                      controller={"kind": "m2n2", "archive_size": 3}, budget=6)
    data["task"]["sample_scores"] = ["next_search/p_correct"]
    cfg = write_config(tmp_path / "dfs.yaml", data)
    SearchRun.create(cfg, tmp_path / "dfs_run").run()
    lines = log_lines(tmp_path / "dfs_run")
    assert len(lines) == 6 and all(x["status"] == "ok" for x in lines)
    res = CliRunner().invoke(app, ["export", str(tmp_path / "dfs_run"), "--front",
                                   "--to", str(tmp_path / "front")])
    assert res.exit_code == 0, res.output
    for out in (tmp_path / "front").iterdir():
        route = json.loads((out / "config.json").read_text())["evomerge_route"]
        assert Path(out, route["sources"][0]).resolve() == (tmp_path / "ps_best").resolve()
        assert "layer route" in (out / "README.md").read_text()


@pytest.mark.parametrize("mutate, match", [
    (lambda d, z: d["task"].update(base=str(z["base"])), "base: a data-flow search"),
    (lambda d, z: d["task"]["space"].update(scale_range=[0.0, 2.0]), "scale_range"),
    (lambda d, z: d["task"]["space"].update(repeat=2), "repeat"),
])
def test_bad_dfs_configs_fail_before_anything_runs(zoo, tasks_dir, tmp_path, mutate, match):
    data = dfs_config(zoo, tasks_dir, [zoo["a"], zoo["b"]])
    mutate(data, zoo)
    with pytest.raises(ConfigError, match=match):
        SearchRun.create(write_config(tmp_path / "c.yaml", data), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sources_of_another_hidden_size_are_refused_by_name(zoo, tasks_dir, tmp_path):
    from evomerge.models.tiny import llama_config, write_family

    wide = write_family(tmp_path / "wide", llama_config(vocab_size=256, hidden_size=48,
                                                        num_layers=2, intermediate_size=64,
                                                        num_heads=4), [])["base"]
    data = dfs_config(zoo, tasks_dir, [zoo["a"], wide])
    with pytest.raises(ConfigError, match=r"sources\[1\].*hidden_size 48 differs from 32"):
        SearchRun.create(write_config(tmp_path / "c.yaml", data), tmp_path / "run")


def test_routed_candidates_score_with_perplexity_and_a_user_callable(zoo, tasks_dir, tmp_path):
    """Evaluators other than lm-eval take the routed model as they take a merged one."""
    rng = torch.Generator().manual_seed(0)
    docs = [" ".join(f"w{int(i)}" for i in torch.randint(0, 200, (12,), generator=rng))
            for _ in range(20)]
    (tmp_path / "text.txt").write_text("\n".join(docs) + "\n")
    (tmp_path / "layers_metric.py").write_text(
        "def score(model, tokenizer, split):\n"
        "    return {'hops': float(model.config.num_hidden_layers)}\n")
    data = dfs_config(zoo, tasks_dir, [zoo["a"], zoo["b"]], budget=4)
    data["task"]["evaluators"] = [
        {"name": "ppl", "kind": "perplexity", "data": str(tmp_path / "text.txt"),
         "heldout_fraction": 0.25},
        {"name": "hops", "kind": "callable", "function": "layers_metric:score",
         "python_path": [str(tmp_path)], "metrics": ["hops"]},
    ]
    data["task"]["objectives"] = [
        {"name": "ppl", "evaluator": "ppl", "metric": "perplexity", "direction": "minimize",
         "reference": 1e6},
        {"name": "hops", "evaluator": "hops", "metric": "hops"}]
    SearchRun.create(write_config(tmp_path / "c.yaml", data), tmp_path / "run").run()
    lines = log_lines(tmp_path / "run")
    assert all(x["status"] == "ok" for x in lines), [x.get("error") for x in lines]
    routes = [x["objectives"]["hops"] for x in lines]
    assert all(v >= 2 for v in routes) and all(x["objectives"]["ppl"] > 1 for x in lines)
