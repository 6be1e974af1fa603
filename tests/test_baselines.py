"""Baselines in every run, three disjoint splits and honest statistics (docs/design.md §7.5):
hand-set recipes scored first and given to the controller as starting points, the best
chosen on the validation split, test figures with standard errors and a paired comparison
with the best baseline."""

from __future__ import annotations

import json
from math import comb, sqrt

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from evomerge.export import choose_trials
from evomerge.run.directory import RunDirectory
from evomerge.run.report import report
from evomerge.run.search_run import SearchRun, seeded_setup
from evomerge.run.trial_log import item_scores
from evomerge.search.protocol import ControllerSetup
from evomerge.search_config import ConfigError, SearchConfig
from evomerge.space.parameter import ParameterSpace
from evomerge.stats import bootstrap_se, compare, mcnemar, paired_bootstrap, standard_error

from .test_merge_search import log_lines, merge_config, write_config

DEFAULT_NAMES = ["source 0 alone", "source 1 alone", "task arithmetic, weight 1",
                 "task arithmetic, weight 1/2", "TIES, density 0.5, weight 1",
                 "DARE-TIES, density 0.5, weight 1"]


def defaults_config(zoo, tasks_dir, controller, budget, **task):
    data = merge_config(zoo, tasks_dir, controller, budget=budget, **task)
    del data["task"]["baselines"]  # the defaults
    return data


# --- statistics ------------------------------------------------------------------------------
def test_mcnemar_is_the_exact_binomial_test_on_the_disagreements():
    a = np.array([1] * 8 + [0] * 2 + [1] * 5)  # 8 wins, 2 losses, 5 ties (both right)
    b = np.array([0] * 8 + [1] * 2 + [1] * 5)
    want = 2 * sum(comb(10, i) for i in range(3)) / 2**10
    assert mcnemar(a, b) == pytest.approx(want)
    assert mcnemar(a, a) == 1.0


def test_paired_bootstrap_of_a_folded_objective():
    rng = np.random.default_rng(0)
    x = {"add": (rng.random(400) < 0.8).astype(float), "rev": (rng.random(400) < 0.6).astype(float)}
    y = {"add": x["add"].copy(), "rev": x["rev"].copy()}
    y["rev"][:40] = 0.0  # b is worse on the weaker skill by 40 items' worth at most
    worst = lambda m: min(m.values())  # noqa: E731
    same = paired_bootstrap(x, x, worst)
    assert same.difference == same.low == same.high == 0.0
    d = paired_bootstrap(x, y, worst)
    assert d.difference == pytest.approx(worst({k: v.mean() for k, v in x.items()})
                                         - worst({k: v.mean() for k, v in y.items()}))
    assert 0 < d.low <= d.difference <= d.high  # paired: the shared items cancel
    assert d.significant and d.items == 800
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(x, {"add": x["add"][:10], "rev": x["rev"]}, worst)


def test_standard_errors():
    s = (np.arange(300) < 90).astype(float)  # p = 0.3
    assert standard_error(s) == pytest.approx(sqrt(0.3 * 0.7 / 299), rel=1e-6)
    # the min of a clearly weaker skill and a strong one: about the weaker skill's error
    items = {"weak": s, "strong": np.ones(300)}
    assert bootstrap_se(items, lambda m: min(m.values())) == pytest.approx(
        standard_error(s), rel=0.15)
    assert compare({"a": s}, {"a": 1 - s}, lambda m: m["a"]).p_value is not None


# --- the space's own terms ------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.floats(0, 2), min_size=3, max_size=3),
       density=st.floats(0.1, 1.0), method=st.sampled_from(["task_arithmetic", "ties"]))
def test_a_hand_set_recipe_encodes_to_the_genome_that_decodes_to_it(weights, density, method):
    space = ParameterSpace(["a", "b", "c"], base="z", methods=["task_arithmetic", "ties"],
                           groups=2, ranges={"weight": (0, 2), "density": (0.1, 1.0)})
    params = {"weight": weights, "density": density} if method == "ties" else \
        {"weight": weights}
    recipe = space.decode(space.encode(method, params))
    assert recipe.method == method
    for src, w in zip(recipe.sources, weights, strict=True):
        assert src.parameters["weight"]["groups"] == pytest.approx([w, w], abs=1e-12)
        if method == "ties":
            assert src.parameters["density"]["groups"] == pytest.approx([density] * 2, abs=1e-12)


def test_what_the_space_cannot_say_is_named():
    space = ParameterSpace(["a", "b"], base="z", method="ties", ranges={"weight": (0, 1)})
    with pytest.raises(ValueError, match="weight = 1.5 is outside the space's range"):
        space.encode("ties", {"weight": 1.5})
    with pytest.raises(ValueError, match="dare_ties is not a method of this space"):
        space.encode("dare_ties", {"weight": 1})


def test_seeded_setup_starts_from_the_best_scored_baseline():
    setup = ControllerSetup(np.full(2, 0.5), np.zeros(2), np.ones(2), [np.full(2, 0.5)])
    lines = [{"trial": i, "id": -1 - i, "fitness": f, "seconds": 1.0, **x} for i, (f, x) in
             enumerate([(-0.3, {"status": "ok", "objectives": {"loss": 0.3}, "genome": [0.1, 0.1]}),
                        (-0.2, {"status": "ok", "objectives": {"loss": 0.2}, "genome": [0.9, 0.9]}),
                        (-0.1, {"status": "ok", "objectives": {"loss": 0.1}}),  # not in the space
                        (None, {"status": "failed", "objectives": {}, "genome": [0.0, 0.0]})])]
    seeded = seeded_setup(setup, lines, ("loss", "minimize"))
    assert seeded.x0.tolist() == [0.9, 0.9]
    assert [g.tolist() for g in seeded.starts] == [[0.9, 0.9], [0.1, 0.1]]
    assert [g.tolist() for g in seeded.initial_with_starts()] == [[0.9, 0.9], [0.1, 0.1]]
    assert [(r.candidate_id, r.fitness) for r in seeded.start_results] == [(-2, -0.2), (-1, -0.3)]
    assert seeded_setup(setup, lines[2:], ("loss", "minimize")) is setup



def test_m2n2_takes_scored_starts_into_its_archive_without_asking_them():
    from evomerge.search.m2n2 import M2N2Spec
    from evomerge.search.protocol import Result, SearchContext

    starts = [np.full(2, 0.9), np.full(2, 0.1), np.array([0.9, 0.1])]
    results = [Result(-1 - i, f, {"y": f}, np.array([f, 1 - f, 0.5]))
               for i, f in enumerate([0.8, 0.4, 0.3])]
    setup = ControllerSetup(np.full(2, 0.5), np.zeros(2), np.ones(2),
                            [np.full(2, 0.5), np.full(2, 0.7)], starts=starts,
                            start_results=results)
    spec = M2N2Spec(kind="m2n2", archive_size=4)
    ctx = SearchContext(10, 0, [("y", "maximize")], "<test>", None)
    m2n2 = spec.build(setup, ctx)
    assert [g.tolist() for g in m2n2.genomes] == [g.tolist() for g in starts]
    assert m2n2.scores.shape == (3, 3) and m2n2.best_genome().tolist() == [0.9, 0.9]
    first = m2n2.ask()[0]
    assert "initial" not in first.info and first.info["parent_a"] in range(3)
    # starts without per-sample scores are asked, as are the task's fill members
    unscored = [Result(r.candidate_id, r.fitness, r.objectives) for r in results]
    plain = spec.build(ControllerSetup(setup.x0, setup.lower, setup.upper, setup.initial,
                                       starts=starts, start_results=unscored), ctx)
    asked = [plain.ask()[0] for _ in range(3)]
    assert all(c.info.get("initial") for c in asked)
    assert [c.genome.tolist() for c in asked] == [g.tolist() for g in starts]


def test_an_m2n2_run_spends_no_trial_on_its_scored_baselines(zoo, tasks_dir, tmp_path):
    data = defaults_config(zoo, tasks_dir, {"kind": "m2n2", "archive_size": 4}, 10)
    run = tmp_path / "run"
    SearchRun.create(write_config(tmp_path / "c.yaml", data), run).run()
    lines = log_lines(run)
    assert [x.get("baseline") for x in lines[:6]] == DEFAULT_NAMES
    searched = lines[6:]
    assert len(searched) == 4 and not any("cached" in x for x in searched)
    # resume from the checkpoint after the baselines asks the same children
    again = tmp_path / "again"
    SearchRun.create(write_config(tmp_path / "c.yaml", data), again).run(stop_after=0)
    SearchRun.open(again).run()
    assert [x["recipe_digest"] for x in log_lines(again)] == \
        [x["recipe_digest"] for x in lines]

# --- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("baselines, space, match", [
    ([{"name": "x", "method": "ties", "parameters": {"alpha": 1}}], None,
     "parameters.alpha: not a parameter of ties"),
    ([{"name": "x", "method": "ties", "parameters": {"weight": [1, 2, 3]}}], None,
     "3 values for 2 sources"),
    ([{"name": "x", "method": "linear"}, {"name": "x", "method": "linear"}], None,
     "the name 'x' is used twice"),
    ([{"name": "x", "method": "linear"}], {"kind": "dfs"}, "its baseline is model A"),
])
def test_bad_baselines_are_named(zoo, tasks_dir, baselines, space, match):
    data = merge_config(zoo, tasks_dir, {"kind": "cmaes"}, space=space, baselines=baselines)
    if space:
        del data["task"]["base"]
    with pytest.raises(Exception, match=match):
        SearchConfig.model_validate(data)


def test_a_budget_the_baselines_would_spend_is_refused(zoo, tasks_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", defaults_config(zoo, tasks_dir, {"kind": "cmaes"}, 6))
    with pytest.raises(ConfigError, match="leave none to the controller after the 6 baselines"):
        SearchRun.create(cfg, tmp_path / "run").run()
    assert not (tmp_path / "run" / "trials.jsonl").exists()


# --- runs -----------------------------------------------------------------------------------
def test_baselines_are_scored_first_on_every_split_and_lead_the_search(zoo, tasks_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", defaults_config(
        zoo, tasks_dir, {"kind": "optuna", "sampler": "tpe"}, 11))
    SearchRun.create(cfg, tmp_path / "run").run()
    lines = log_lines(tmp_path / "run")
    base, searched = lines[:6], lines[6:]
    assert [x["baseline"] for x in base] == DEFAULT_NAMES
    assert [x["id"] for x in base] == [-1, -2, -3, -4, -5, -6]
    assert all(x["status"] == "ok" and "heldout" in x and "heldout_items" in x for x in base)
    # the ties space expresses a source alone and TIES; task arithmetic and DARE-TIES are
    # reference lines only
    seedable = [x for x in base if "genome" in x]
    assert [x["baseline"] for x in seedable] == [DEFAULT_NAMES[i] for i in (0, 1, 4)]
    # Optuna asks them first, best first (the recipe cache answers: no evaluation)
    order = sorted(seedable, key=lambda x: (-x["objectives"]["next"], x["trial"]))
    assert [x.get("cached") for x in searched[:3]] == [x["trial"] for x in order]
    assert all("baseline" not in x and x["id"] >= 0 for x in searched)
    data = report(tmp_path / "run")
    assert [b["name"] for b in data["baselines"]] == DEFAULT_NAMES
    assert data["best_baseline"]["baseline"] is not None
    assert data["selected_on"] == "search"  # the config has no validation split


def test_a_run_killed_among_its_baselines_scores_only_the_missing_ones(zoo, tasks_dir,
                                                                      tmp_path):
    cfg = write_config(tmp_path / "c.yaml", defaults_config(zoo, tasks_dir, {"kind": "cmaes"}, 8))
    run = tmp_path / "run"
    SearchRun.create(cfg, run).run(stop_after=0)  # the baselines, then the first checkpoint
    lines = log_lines(run)
    assert [x["baseline"] for x in lines] == DEFAULT_NAMES
    # killed after two baselines: the first checkpoint was never written
    (run / "trials.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[:2]))
    (run / "checkpoint.pkl").unlink()
    (run / "state.json").unlink()
    SearchRun.open(run).run()
    again = log_lines(run)
    assert again[:2] == lines[:2]
    assert sorted(x["baseline"] for x in again if "baseline" in x) == sorted(DEFAULT_NAMES)
    assert [x["trial"] for x in again] == list(range(8))
    # the rest scored exactly as before (same recipes, same items)
    before = {x["baseline"]: x["objectives"] for x in lines}
    assert all(before[x["baseline"]] == x["objectives"] for x in again if "baseline" in x)


def test_an_old_run_without_baselines_resumes_without_them(zoo, tasks_dir, tmp_path):
    data = merge_config(zoo, tasks_dir, {"kind": "cmaes"}, budget=6)
    data["rescore_top"] = 0  # as the release before it digested the run
    cfg = write_config(tmp_path / "c.yaml", data)
    run = tmp_path / "run"
    SearchRun.create(cfg, run).run(stop_after=3)
    # the frozen config as a release without baselines or top-k re-scoring wrote it
    old = yaml.safe_load((run / "config.yaml").read_text())
    del old["task"]["baselines"], old["rescore_top"]
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    SearchRun.open(run).run()
    lines = log_lines(run)
    assert len(lines) == 6 and not any("baseline" in x for x in lines)


def test_the_validation_split_chooses_and_the_test_split_reports(zoo, tasks_dir, tmp_path):
    data = merge_config(zoo, tasks_dir, {"kind": "random"}, budget=10,
                        baselines=[{"name": "ties", "method": "ties",
                                    "parameters": {"weight": 1, "density": 0.5}}])
    data["task"]["evaluators"][0]["validation_fraction"] = 0.5
    data["rescore_top"] = 2
    run = tmp_path / "run"
    SearchRun.create(write_config(tmp_path / "c.yaml", data), run).run()
    lines = log_lines(run)
    rescored = [x for x in lines if "heldout" in x]
    assert rescored[0]["baseline"] == "ties"
    assert all("validation" in x for x in rescored)
    # the validation and test items are disjoint halves of the held-out tasks' documents
    from evomerge.evaluate.lm_eval_harness import LMEvalEvaluator

    cfg = RunDirectory(run).read_config()
    ev = LMEvalEvaluator(cfg.task.evaluators[0])
    for name in ev.sides["heldout"].samples:
        val, test = ev.sides["validation"].samples[name], ev.sides["heldout"].samples[name]
        assert not set(val) & set(test) and sorted(val + test) == list(range(30))
    data = report(run)
    assert data["selected_on"] == "validation"
    chosen = max(rescored, key=lambda x: (x["validation"]["next"], -x["trial"]))
    assert data["chosen"]["trial"] == chosen["trial"] == data["best"]["trial"]
    files = RunDirectory(run)
    assert choose_trials(files, files.read_config(), None, True, False)[0]["trial"] == \
        chosen["trial"]
    items = item_scores(chosen["heldout_items"])
    assert data["chosen"]["test"]["next"]["value"] == pytest.approx(
        items["skills:next_search/acc"].mean())
    assert data["chosen"]["test"]["next"]["se"] == pytest.approx(
        standard_error(items["skills:next_search/acc"]))
    # top-k: trials that are neither front entrants nor in the top 2 are not re-scored
    assert len(rescored) < len(lines)


def test_report_compares_the_best_searched_trial_with_the_best_baseline(zoo, tasks_dir,
                                                                        tmp_path, capsys):
    data = merge_config(zoo, tasks_dir, {"kind": "random"}, budget=8,
                        baselines=[{"name": "ta", "method": "task_arithmetic",
                                    "parameters": {"weight": 0.5}}])
    data["task"]["evaluators"][0]["validation_fraction"] = 0.5
    run = tmp_path / "run"
    SearchRun.create(write_config(tmp_path / "c.yaml", data), run).run()
    out = report(run)
    cmp_ = out["comparison"]
    lines = {x["trial"]: x for x in log_lines(run)}
    a = item_scores(lines[cmp_["searched"]]["heldout_items"])["skills:next_search/acc"]
    b = item_scores(lines[cmp_["baseline"]]["heldout_items"])["skills:next_search/acc"]
    assert cmp_["difference"] == pytest.approx(a.mean() - b.mean())
    assert cmp_["low"] <= cmp_["difference"] <= cmp_["high"] and cmp_["items"] == a.size
    assert cmp_["p_value"] == pytest.approx(mcnemar(a, b))
    from evomerge.report_view import format_report

    text = format_report(out)
    assert "against the best baseline ('ta'" in text and "95% interval" in text
    assert "Baselines: 1 hand-set recipe(s)" in text


def test_the_controller_may_see_a_smoother_signal_than_the_reported_metric(zoo, tasks_dir,
                                                                           tmp_path):
    data = merge_config(zoo, tasks_dir, {"kind": "cmaes"}, budget=4)
    data["task"]["objectives"] = [{"name": "next", "metric": "next_search/acc",
                                   "search_metric": "next_search/p_correct"}]
    data["task"]["evaluators"][0]["validation_fraction"] = 0.5
    run = tmp_path / "run"
    SearchRun.create(write_config(tmp_path / "c.yaml", data), run).run()
    lines = log_lines(run)
    searched = [x["objectives"]["next"] for x in lines]
    # p(correct choice) averaged over 30 search items: not a count of hits out of 30
    assert any(abs(v * 30 - round(v * 30)) > 1e-3 for v in searched)
    for x in (x for x in lines if "heldout" in x):  # the reported metric: exact hits of 15
        for split in ("validation", "heldout"):
            v = x[split]["next"]
            assert abs(v * 15 - round(v * 15)) < 1e-6
    data["task"]["objectives"][0]["search_metric"] = "next_search/p_nothing"
    with pytest.raises(ConfigError, match=r"objectives\[0\].search_metric: evaluator 'skills' "
                                          "produces no 'next_search/p_nothing'"):
        SearchRun.create(write_config(tmp_path / "d.yaml", data), tmp_path / "run2")
