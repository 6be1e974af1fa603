"""The anchor-point fidelity (issue 24, part 2): anchors learned from the run's own full
evaluations, candidates scored on them and promoted on the estimate, exact resume, and the
configs it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evomerge.errors import ConfigError
from evomerge.item_response import anchor_points
from evomerge.run.anchors import AnchorRung
from evomerge.run.errors import RunError
from evomerge.run.search_run import SearchRun
from evomerge.run.trial_log import decode_scores
from evomerge.search_config import AnchorSpec, load_config
from evomerge.tasks.registry import build_task

from .test_merge_search import merge_config, write_config

ANCHORS = {"items": 4, "min_full": 3, "refit_every": 2}
OBJECTIVES = [{"name": "next", "metric": "next_search/p_correct"},
              {"name": "echo", "metric": "echo_search/acc"}]


def anchored(zoo, tasks_dir, budget: int = 14, **fidelity) -> dict:
    data = merge_config(zoo, tasks_dir, {"kind": "random"}, budget=budget,
                        objectives=OBJECTIVES)
    data["seed"] = 3
    data["fidelity"] = {"anchors": dict(ANCHORS), "promote": 0.5, "window": 6, **fidelity}
    return data


def log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]


def test_anchor_items_estimate_the_objectives_from_the_full_splits_own_scores(
        zoo, tasks_dir, tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", anchored(zoo, tasks_dir)))
    task = build_task(cfg, "c.yaml")
    worker = task.worker()
    recipe = task.decode(task.space.initial() + 0.1)
    objectives, scores, extra = worker.evaluate(recipe, "search")
    # full search evaluations return the objectives' own items, which the anchors learn from
    assert extra["score_parts"] == [["skills:next_search/p_correct", 30],
                                    ["skills:echo_search/acc", 30]]
    rows = {"skills:next_search/p_correct": scores[:30], "skills:echo_search/acc": scores[30:]}
    assert objectives["next"] == pytest.approx(float(rows["skills:next_search/p_correct"]
                                                     .mean()), abs=1e-5)
    rng = np.random.default_rng(0)
    items = {}
    for key in rows:
        positions = sorted(rng.choice(30, size=5, replace=False).tolist())
        weights = rng.dirichlet(np.ones(5)).tolist()
        items[key] = (positions, weights)
    estimate, none, extra = worker.evaluate(recipe, "search", items=items)
    assert none is None and extra["anchor_items"] == 10
    for name, key in (("next", "skills:next_search/p_correct"),
                      ("echo", "skills:echo_search/acc")):
        positions, weights = items[key]
        assert estimate[name] == pytest.approx(float(np.dot(weights, rows[key][positions])),
                                               abs=1e-5)
    worker.close()


def test_a_search_with_anchors_promotes_on_the_estimate_and_resumes_exactly(
        zoo, tasks_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", anchored(zoo, tasks_dir))
    SearchRun.create(cfg, tmp_path / "whole").run()
    lines = log(tmp_path / "whole")
    assert len(lines) == 14
    full = [x for x in lines if x["fidelity"] == 1.0 and "cached" not in x]
    cheap = [x for x in lines if x["fidelity"] < 1.0]
    assert len(full) >= 3 and cheap
    # until min_full candidates are scored in full, nothing is estimated
    assert all(x["fidelity"] == 1.0 and "anchors_fit" not in x for x in lines[:3])
    fraction = 8 / 60  # 4 anchors for each of the two 30-item metrics
    rows = [decode_scores(x["scores"]) for x in full]
    for x in lines:
        if "anchors_fit" not in x:
            continue
        fitted_on = x["anchors_fit"]  # fitted after 3, 5, 7, ... full evaluations
        assert fitted_on >= 3 and (fitted_on - 3) % 2 == 0
        if x["fidelity"] < 1:
            assert x["fidelity"] == pytest.approx(fraction) and "scores" not in x
            assert x["anchor_items"] == 8
            continue
        # promoted: its estimate came from the anchors the run had then, which the logged
        # full rows before it determine, and from its own scores on those items
        estimate = x["rungs"][repr(fraction)]
        seen = np.stack(rows[:fitted_on]).astype(np.float64)
        mine = decode_scores(x["scores"])
        for name, at in (("next", 0), ("echo", 30)):
            positions, weights = anchor_points(seen[:, at: at + 30], 4, 3)
            assert estimate[name] == pytest.approx(
                float(np.dot(weights, mine[at: at + 30][positions])), abs=1e-3)
    SearchRun.create(cfg, tmp_path / "parts").run(stop_after=9)
    SearchRun.open(tmp_path / "parts").run()

    def sig(x: dict) -> tuple:
        return (x["trial"], x["id"], x["fidelity"], x["objectives"], x.get("rungs"),
                x.get("anchors_fit"))

    assert [sig(x) for x in log(tmp_path / "whole")] == [sig(x) for x in log(tmp_path / "parts")]


@pytest.mark.parametrize(("mutate", "says"), [
    (lambda d: d["fidelity"].update(rungs=[0.5, 1.0]), "rungs .* or anchors"),
    (lambda d: d["fidelity"].pop("anchors"), "rungs .* or anchors"),
    (lambda d: d["fidelity"]["anchors"].update(item=3), "item"),
    (lambda d: d["task"].update(sample_scores=["echo"]), "leave task.sample_scores out"),
    (lambda d: d["task"].update(
        evaluators=[{"name": "ppl", "kind": "perplexity", "data": "{data}"}],
        objectives=[{"name": "ppl", "metric": "perplexity", "direction": "minimize",
                     "reference": 1e6}]),
     r"perplexity.*cannot score chosen items"),
])
def test_configs_the_anchors_cannot_serve_are_refused_by_field(zoo, tasks_dir, tmp_path,
                                                               mutate, says):
    data = anchored(zoo, tasks_dir)
    mutate(data)
    text = tmp_path / "t.txt"
    text.write_text("".join(f"w{i} w{i + 1} w{i + 2}\n" for i in range(20)))
    for ev in data["task"]["evaluators"]:
        if ev.get("data") == "{data}":
            ev["data"] = str(text)
    cfg = write_config(tmp_path / "c.yaml", data)
    with pytest.raises(ConfigError, match=says):
        SearchRun.create(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_task_without_per_item_scores_refuses_anchors(tmp_path):
    cfg = write_config(tmp_path / "s.yaml", {
        "name": "s", "budget": 5, "task": {"kind": "synthetic", "dimension": 4},
        "controller": {"kind": "random"},
        "fidelity": {"anchors": {"items": 3}, "promote": 0.3}})
    with pytest.raises(ConfigError, match="fidelity.anchors: a SyntheticTask cannot score"):
        SearchRun.create(cfg, tmp_path / "run")


def test_anchor_rung_refits_on_schedule_and_names_what_it_cannot_learn():
    rng = np.random.default_rng(0)
    rung = AnchorRung(AnchorSpec(items=3, min_full=2, refit_every=3), seed=1)
    parts = [["e:a", 10], ["e:b", 6]]
    fits = []
    for trial in range(8):
        rung.note_full((rng.random(16) > 0.5).astype(np.float32), parts, trial)
        fits.append(rung.fit.rows if rung.fit else None)
    assert fits == [None, 2, 2, 2, 5, 5, 5, 8]
    assert rung.fit is not None and rung.fit.fraction == pytest.approx(6 / 16)
    again = AnchorRung(AnchorSpec(items=3, min_full=2, refit_every=3), seed=1)
    for row in rung.rows:
        again.note_full(row, parts, 0)
    assert again.fit == rung.fit  # a function of the rows alone: what resume relies on
    with pytest.raises(RunError, match=r"trial 9: .*laid out as"):
        rung.note_full(np.zeros(16), [["e:a", 16]], 9)
    small = AnchorRung(AnchorSpec(items=10, min_full=2), seed=0)
    small.note_full(np.zeros(16), parts, 0)
    with pytest.raises(RunError, match=r"items: 10 anchors per metric, but .*\[10, 6\]"):
        small.note_full(np.ones(16), parts, 1)
