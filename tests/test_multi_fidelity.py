"""Multi-fidelity (asynchronous successive halving): rungs logged, promotion by rank, only
full-fidelity trials in the front, exact resume, digits subsets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from evomerge.run.report import report
from evomerge.run.search_run import SearchRun
from evomerge.search_config import ConfigError, load_config

from .conftest import write_yaml


def config(tmp_path: Path, controller: dict, task: dict | None = None, budget: int = 90,
           name: str = "c.yaml", **fidelity) -> Path:
    return write_yaml(tmp_path / name, {
        "name": "mf", "seed": 2, "budget": budget, "checkpoint_every": 7,
        "controller": controller,
        "task": task or {"kind": "synthetic", "dimension": 8, "median_seconds": 0},
        "fidelity": {"rungs": [0.25, 0.5, 1.0], "promote": 0.34, "window": 30, **fidelity}})


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("controller", [{"kind": "random"}, {"kind": "m2n2",
                                                             "archive_size": 6}],
                         ids=lambda c: c["kind"])
def test_rungs_promote_the_best_share_and_only_full_trials_reach_the_front(tmp_path,
                                                                          controller):
    SearchRun.create(config(tmp_path, controller), tmp_path / "r").run()
    log = lines(tmp_path / "r")
    count = Counter(x["fidelity"] for x in log)
    assert set(count) <= {0.25, 0.5, 1.0} and sum(count.values()) == 90
    assert count[0.25] > 0 and count[1.0] > 0
    if controller["kind"] == "random":  # a stationary sampler: about a third go on (an
        # improving one like M2N2 beats its rung's history more often, and goes on more)
        assert 0.2 < (count[0.5] + count[1.0]) / 90 < 0.5
    for x in log:  # each trial logs every rung it went through below its last
        below = [f for f in (0.25, 0.5) if f < x["fidelity"]]
        assert sorted(float(f) for f in x["rungs"]) == below
        assert ("scores" in x) == (x["fidelity"] == 1.0)  # partial scores never reach M2N2
    # promotion by rank: a trial goes on exactly when it is in the best third of the last 30
    # results at its first rung
    seen: list[float] = []
    for x in log:
        v = x["rungs"]["0.25"]["score"] if "0.25" in x["rungs"] else x["objectives"]["score"]
        recent = seen[-29:]
        promoted = sum(s > v for s in recent) < max(1, int((len(recent) + 1) * 0.34))
        # M2N2's initial members seed its archive: always scored in full
        initial = controller["kind"] == "m2n2" and x["id"] < controller["archive_size"]
        assert (x["fidelity"] > 0.25) == ((promoted or initial) and x["status"] == "ok")
        if initial:
            assert x["fidelity"] == 1.0
        seen.append(v)
    full = {x["trial"] for x in log if x["fidelity"] == 1.0}
    rep = report(tmp_path / "r")
    assert rep["front"] and {e["trial"] for e in rep["front"]} <= full
    assert rep["low_fidelity"] == 90 - count[1.0]
    from typer.testing import CliRunner

    from evomerge.cli import app

    text = CliRunner().invoke(app, ["report", str(tmp_path / "r")]).output
    assert f"{90 - count[1.0]} trial(s) stopped at a lower fidelity rung" in text


def test_a_multi_fidelity_run_resumes_exactly(tmp_path):
    cfg = config(tmp_path, {"kind": "m2n2", "archive_size": 6})
    SearchRun.create(cfg, tmp_path / "whole").run()
    SearchRun.create(cfg, tmp_path / "parts").run(stop_after=31)
    with open(tmp_path / "parts" / "trials.jsonl", "a") as f:
        f.write('{"trial": 31, "id"')  # killed mid-write
    SearchRun.open(tmp_path / "parts").run()

    def sig(x: dict) -> tuple:
        return x["trial"], x["id"], x["fidelity"], x["objectives"], x["rungs"]

    assert [sig(x) for x in lines(tmp_path / "whole")] == \
        [sig(x) for x in lines(tmp_path / "parts")]


def test_digits_rungs_score_leading_samples(tmp_path):
    from evomerge.evaluate.digits import DigitsEvaluator, init_params

    ev = DigitsEvaluator()
    theta = init_params(np.random.default_rng(0), 0.1)
    whole, scores = ev.evaluate(theta)
    part, part_scores = ev.evaluate(theta, 0.25)
    assert len(part_scores) == int(np.ceil(0.25 * len(scores)))
    np.testing.assert_array_equal(part_scores, scores[: len(part_scores)])
    assert part["accuracy"] == pytest.approx(float(part_scores.mean()))


@pytest.mark.parametrize(("rungs", "promote", "says"), [
    ([0.5, 0.25, 1.0], 0.3, "must increase strictly"),
    ([0.25, 0.5], 0.3, "must increase strictly from above 0 to 1.0"),
    ([0.25, 1.0], 1.5, "promote"),
])
def test_bad_rungs_are_named(tmp_path, rungs, promote, says):
    cfg = config(tmp_path, {"kind": "random"}, rungs=rungs, promote=promote)
    with pytest.raises(ConfigError, match=says):
        load_config(cfg)
