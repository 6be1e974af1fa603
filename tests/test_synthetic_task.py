"""The synthetic task that benchmarks measure schedulers with: heavy-tailed, replayable
evaluation times and a score with per-sample parts."""

from __future__ import annotations

import numpy as np

from evomerge.run.search_run import SearchRun
from evomerge.search_config import SearchConfig
from evomerge.tasks.registry import build_task

from .conftest import write_yaml


def test_evaluation_times_are_heavy_tailed_and_replayable():
    cfg = SearchConfig.model_validate({
        "budget": 1, "controller": {"kind": "random"},
        "task": {"kind": "synthetic", "dimension": 4, "median_seconds": 0.1, "tail": 1.0}})
    worker = build_task(cfg).worker()
    rng = np.random.default_rng(0)
    genomes = [rng.uniform(0, 1, 4) for _ in range(4000)]
    secs = np.array([worker.drawn_seconds(g) for g in genomes])
    assert abs(np.median(secs) / 0.1 - 1) < 0.1
    assert np.quantile(secs, 0.95) > 4 * 0.1  # the tail: 5% take over 4x the median
    assert worker.drawn_seconds(genomes[7]) == worker.drawn_seconds(genomes[7].copy())
    cfg.task.median_seconds = 0.0
    objectives, scores, _ = build_task(cfg).worker().evaluate(genomes[0], "search")
    assert scores.shape == (4,) and 0 <= objectives["score"] <= 1
    assert objectives["score"] == scores.mean()
    best, _, _ = build_task(cfg).worker().evaluate(np.linspace(0.2, 0.8, 4), "search")
    assert best["score"] == 1.0  # the optimum is known


def test_m2n2_searches_the_synthetic_task(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", {
        "budget": 60, "controller": {"kind": "m2n2", "archive_size": 6},
        "task": {"kind": "synthetic", "dimension": 6, "median_seconds": 0}})
    state = SearchRun.create(cfg, tmp_path / "r").run()
    assert state.trials == 60 and state.best["objectives"]["score"] > 0.8
