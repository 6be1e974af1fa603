"""The quickstart's pieces: the skill zoo (specialist experts over a weak base, lm-eval tasks
with large search and held-out splits, exact match and answer probabilities), and a run's
outputs when its budget is spent (plots, the best trial exported, a worst-skill objective)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evomerge.models.skill_data import SKILLS
from evomerge.models.skill_zoo import EXPERTS
from evomerge.run.report import report
from evomerge.run.search_run import SearchRun

ROOT = Path(__file__).resolve().parent.parent
QUICK = ("add", "rev", "sort")


def test_experts_are_specialists_over_a_weak_base(skill_zoo):
    scores = json.loads((skill_zoo / "zoo.json").read_text())["exact_match_test"]
    for name, own in EXPERTS.items():
        for skill in own:
            assert scores[name][skill] >= 0.9, (name, skill)
            if skill in QUICK:  # the base holds them weakly (TR, a word map, it learns fast)
                assert scores["base"][skill] < scores[name][skill] - 0.2
        for other in QUICK:
            if other not in own:  # forgotten: well below the skill's own expert
                assert scores[name][other] <= 0.75, (name, other, scores[name][other])


def test_tasks_have_large_disjoint_splits_scored_two_ways(skill_zoo):
    from evomerge.evaluate.registry import build_evaluator
    from evomerge.evaluate.specs import LMEvalSpec

    for skill in SKILLS:
        rows = {split: (skill_zoo / "tasks" / f"{skill}_{split}.jsonl").read_text().splitlines()
                for split in ("search", "test")}
        assert all(len(r) >= 1500 for r in rows.values())
        assert rows["search"] != rows["test"]
    spec = LMEvalSpec.model_validate({
        "name": "s", "kind": "lm_eval", "include_path": [str(skill_zoo / "tasks")],
        "tasks": ["add_search", "rev_search"], "heldout_tasks": ["add_test", "rev_test"],
        "batch_size": 256})
    ev = build_evaluator(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(skill_zoo / "math")
    tok = AutoTokenizer.from_pretrained(skill_zoo / "math")
    out = ev.evaluate(model, tok, "heldout", fraction=0.2)  # named as their search twins
    assert out.metrics["add_search/acc"] >= 0.9 and out.metrics["rev_search/acc"] < 0.5
    p = out.samples["add_search/p_answer"]  # the continuous twin of exact match
    assert len(p) == 300 and 0 < p.min() and p.max() <= 1
    assert out.metrics["add_search/p_answer"] > out.metrics["rev_search/p_answer"]


@pytest.fixture(scope="module")
def quick_run(skill_zoo, tmp_path_factory, ) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg.pop("zoo")
    cfg.update(budget=10, executor={"kind": "inline"})
    t = cfg["task"]
    t["base"] = str(skill_zoo / "base")
    t["sources"] = [str(skill_zoo / n) for n in ("math", "rev", "sort")]
    t["evaluators"][0]["include_path"] = [str(skill_zoo / "tasks")]
    # one baseline (each costs a full evaluation on every split; tests/test_baselines.py
    # runs the defaults)
    t["baselines"] = [{"name": "task arithmetic, 1/3", "method": "task_arithmetic",
                       "parameters": {"weight": 1 / 3}}]
    folder = tmp_path_factory.mktemp("quick")
    (folder / "q.yaml").write_text(yaml.safe_dump(cfg))
    SearchRun.create(folder / "q.yaml", folder / "run").run()
    return folder / "run"


@pytest.mark.smoke
@pytest.mark.timeout(900)  # the skill zoo and the run are built in this test's setup
def test_a_finished_run_has_plots_and_its_best_trial_exported(quick_run):
    plots = sorted(p.name for p in (quick_run / "plots").iterdir())
    assert plots == ["best.png", "front.png", "hypervolume.png"]
    assert all((quick_run / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    best = quick_run / "best"
    for name in ("model.safetensors", "config.json", "evomerge_recipe.yaml",
                 "mergekit_config.yml", "README.md", "tokenizer.json"):
        assert (best / name).exists(), name
    data = report(quick_run)
    assert data["plots"] and data["best_export"] == str(best)
    digest = json.loads((best / "config.json").read_text())["evomerge_recipe_digest"]
    best_line = [json.loads(x) for x in (quick_run / "trials.jsonl").read_text().splitlines()
                 if json.loads(x)["trial"] == data["best"]["trial"]][0]
    assert best_line["recipe_digest"] == digest


def test_the_worst_skill_objective_is_the_minimum_of_the_skills(quick_run):
    lines = [json.loads(x) for x in (quick_run / "trials.jsonl").read_text().splitlines()]
    full = [x for x in lines if x["status"] == "ok" and x.get("fidelity", 1.0) >= 1]
    assert full
    for x in full:
        o = x["objectives"]
        assert o["worst"] == min(o["add"], o["rev"], o["sort"])
        if x.get("heldout"):
            h = x["heldout"]
            assert h["worst"] == min(h["add"], h["rev"], h["sort"])
