"""Pareto archive: front vs brute force, hypervolume vs hand values and moocore, persistence."""

from __future__ import annotations

import json
import math

import moocore
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evomerge.archive import ArchiveEntry, Objective, ParetoArchive


def _better_or_equal(a: float, b: float, direction: str) -> bool:
    return a >= b if direction == "maximize" else a <= b


def _brute_dominates(a: tuple, b: tuple, directions: list[str]) -> bool:
    """Textbook definition, written directly in raw directions (no minimisation transform)."""
    no_worse = all(_better_or_equal(x, y, d) for x, y, d in zip(a, b, directions, strict=True))
    return no_worse and tuple(a) != tuple(b)


def _brute_front(points: list[tuple], directions: list[str]) -> dict[tuple, int]:
    """Unique non-dominated vectors -> index of the first trial that produced them."""
    front: dict[tuple, int] = {}
    for i, p in enumerate(points):
        if any(_brute_dominates(q, p, directions) for q in points):
            continue
        front.setdefault(tuple(p), i)
    return front


def _random_points(rng: np.random.Generator, n: int, m: int, ties: bool) -> list[tuple]:
    if ties:  # small integer grid: many exact duplicates and equal coordinates
        arr = rng.integers(0, 5, size=(n, m)).astype(float)
    else:
        arr = rng.normal(size=(n, m))
    return [tuple(float(x) for x in row) for row in arr]


CASES = [
    (2, ["maximize", "minimize"]),
    (2, ["minimize", "minimize"]),
    (3, ["maximize", "minimize", "maximize"]),
    (3, ["maximize", "maximize", "maximize"]),
]


@pytest.mark.parametrize("m,directions", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("ties", [False, True])
def test_front_matches_brute_force(m, directions, seed, ties):
    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(m)]
    objs = [Objective(n, d) for n, d in zip(names, directions, strict=True)]
    points = _random_points(rng, 80, m, ties)
    archive = ParetoArchive(objs)
    accepted = []
    for i, p in enumerate(points):
        accepted.append(archive.add(i, dict(zip(names, p, strict=True)), payload={"i": i}))

    expected = _brute_front(points, directions)
    got = {tuple(e.values[n] for n in names): e.trial_id for e in archive.front()}
    assert len(archive.front()) == len(got)  # no vector appears twice
    assert got == expected  # same vectors, and the first trial of each vector is the one kept
    assert all(e.payload == {"i": e.trial_id} for e in archive.front())
    if ties:
        assert len(set(points)) < len(points)  # the case really exercises duplicates

    # add() returned True exactly when the point was non-dominated among the points so far
    # and not a repeat of an earlier vector.
    for i, p in enumerate(points):
        prefix = points[: i + 1]
        enters = _brute_front(prefix, directions).get(tuple(p)) == i
        assert accepted[i] == enters, i


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_single_objective_keeps_the_best(direction):
    archive = ParetoArchive([Objective("acc", direction)], reference_point={"acc": 0.5})
    vals = [0.7, 0.9, 0.9, 0.6, 0.8]
    for i, v in enumerate(vals):
        archive.add(i, {"acc": v})
    front = archive.front()
    best = max(vals) if direction == "maximize" else min(vals)
    assert [(e.trial_id, e.values["acc"]) for e in front] == [(vals.index(best), best)]
    expected_hv = max(0.0, best - 0.5) if direction == "maximize" else max(0.0, 0.5 - best)
    assert archive.hypervolume() == pytest.approx(expected_hv)


def test_front_sorted_best_first_on_first_objective():
    objs = [Objective("acc", "maximize"), Objective("size", "minimize")]
    archive = ParetoArchive(objs)
    for i, (a, s) in enumerate([(0.6, 1.0), (0.9, 5.0), (0.75, 2.0), (0.8, 3.0)]):
        assert archive.add(i, {"acc": a, "size": s})
    assert [e.values["acc"] for e in archive.front()] == [0.9, 0.8, 0.75, 0.6]
    assert all(isinstance(e, ArchiveEntry) for e in archive.front())


def test_dominated_members_leave():
    objs = [Objective("acc", "maximize"), Objective("size", "minimize")]
    archive = ParetoArchive(objs)
    archive.add(0, {"acc": 0.5, "size": 3.0})
    archive.add(1, {"acc": 0.7, "size": 4.0})
    assert archive.add(2, {"acc": 0.8, "size": 2.0})  # dominates both
    assert [e.trial_id for e in archive.front()] == [2]
    assert not archive.add(3, {"acc": 0.8, "size": 2.5})  # dominated (same acc, larger): out
    assert not archive.add(4, {"acc": 0.8, "size": 2.0})  # duplicate: first one kept
    assert [e.trial_id for e in archive.front()] == [2]
    assert archive.n_added == 5


def test_hypervolume_hand_computed_2d_mixed_directions():
    # acc maximised, size minimised; ref acc=0, size=5. In minimisation space:
    # A=(-0.8, 3) covers 0.8*2 = 1.6, B=(-0.6, 1) covers 0.6*4 = 2.4, overlap 0.6*2 = 1.2 -> 2.8
    objs = [Objective("acc", "maximize"), Objective("size", "minimize")]
    archive = ParetoArchive(objs, reference_point={"acc": 0.0, "size": 5.0})
    archive.add(0, {"acc": 0.8, "size": 3.0})
    assert archive.hypervolume() == pytest.approx(1.6)
    archive.add(1, {"acc": 0.6, "size": 1.0})
    assert archive.hypervolume() == pytest.approx(2.8)
    # On the front, but beyond the reference in "size": contributes nothing.
    assert archive.add(2, {"acc": 0.95, "size": 6.0})
    # Exactly on the reference in "acc": does not strictly dominate it, contributes nothing.
    assert archive.add(3, {"acc": 0.0, "size": 0.5})
    assert len(archive) == 4
    assert archive.hypervolume() == pytest.approx(2.8)
    assert [hv for _, hv in archive.history] == pytest.approx([1.6, 2.8, 2.8, 2.8])


def test_hypervolume_single_point_2d_exact():
    objs = [Objective("a", "minimize"), Objective("b", "minimize")]
    archive = ParetoArchive(objs, reference_point={"a": 10.0, "b": 10.0})
    for i, p in enumerate([(5, 5), (4, 6), (2, 7), (7, 4)]):
        archive.add(i, {"a": p[0], "b": p[1]})
    assert archive.hypervolume() == pytest.approx(38.0)  # moocore's documented example


@pytest.mark.parametrize("m,directions", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hypervolume_matches_moocore_on_brute_force_front(m, directions, seed):
    rng = np.random.default_rng(100 + seed)
    names = [f"f{i}" for i in range(m)]
    objs = [Objective(n, d) for n, d in zip(names, directions, strict=True)]
    points = _random_points(rng, 60, m, ties=bool(seed % 2))
    # Reference in raw directions: a bit worse than the median, so some front points lie
    # beyond it and must contribute nothing.
    arr = np.array(points)
    med = np.median(arr, axis=0)
    ref = {n: float(med[i] + (-0.5 if d == "maximize" else 0.5))
           for i, (n, d) in enumerate(zip(names, directions, strict=True))}
    archive = ParetoArchive(objs, reference_point=ref)
    for i, p in enumerate(points):
        archive.add(i, dict(zip(names, p, strict=True)))

    brute = np.array(list(_brute_front(points, directions)))
    expected = moocore.hypervolume(
        brute, ref=[ref[n] for n in names], maximise=[d == "maximize" for d in directions]
    )
    assert expected > 0
    assert archive.hypervolume() == pytest.approx(expected, rel=1e-12)


def test_history_monotone_and_counts_every_add():
    rng = np.random.default_rng(7)
    objs = [Objective("a", "maximize"), Objective("b", "minimize"), Objective("c", "maximize")]
    archive = ParetoArchive(objs, reference_point={"a": -1.0, "b": 1.0, "c": -1.0})
    n = 150
    for i in range(n):
        a, b, c = rng.normal(size=3)
        archive.add(i, {"a": a, "b": b, "c": c})
    ns = [k for k, _ in archive.history]
    hvs = [hv for _, hv in archive.history]
    assert ns == list(range(1, n + 1))
    assert all(later >= earlier for earlier, later in zip(hvs, hvs[1:], strict=False))
    assert hvs[-1] > hvs[0]
    assert hvs[-1] == archive.hypervolume()


def test_hypervolume_requires_reference_point():
    archive = ParetoArchive([Objective("a"), Objective("b", "minimize")])
    archive.add(0, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="reference point"):
        archive.hypervolume()
    assert archive.history == []


def test_round_trip_to_dict_from_dict():
    rng = np.random.default_rng(3)
    objs = [Objective("acc", "maximize"), Objective("loss", "minimize")]
    archive = ParetoArchive(objs, reference_point={"acc": 0.0, "loss": 3.0})
    for i in range(40):
        archive.add(i, {"acc": rng.uniform(), "loss": rng.uniform(0, 3)},
                    payload={"recipe": f"r{i}", "genome": [i, i + 0.5]})
    state = json.loads(json.dumps(archive.to_dict(), allow_nan=False))  # JSON-serialisable
    restored = ParetoArchive.from_dict(state)
    assert restored.front() == archive.front()
    assert restored.history == archive.history
    assert restored.hypervolume() == archive.hypervolume()
    assert restored.n_added == archive.n_added
    assert restored.objectives == archive.objectives
    assert restored.reference_point == archive.reference_point
    # The restored archive behaves like the original on further adds.
    nxt = {"acc": 2.0, "loss": -1.0}
    assert restored.add(100, nxt) and archive.add(100, nxt)
    assert restored.front() == archive.front()
    assert restored.history == archive.history


def test_from_dict_rejects_unknown_version():
    state = ParetoArchive([Objective("a")]).to_dict()
    state["version"] = 99
    with pytest.raises(ValueError, match="version"):
        ParetoArchive.from_dict(state)


def test_payload_is_copied():
    archive = ParetoArchive([Objective("a")])
    payload = {"genome": [1, 2]}
    archive.add(0, {"a": 1.0}, payload)
    payload["genome"].append(3)
    archive.front()[0].payload["genome"].append(4)
    assert archive.front()[0].payload == {"genome": [1, 2]}


def test_export_front_writes_valid_json_atomically(tmp_path):
    objs = [Objective("acc", "maximize"), Objective("size", "minimize")]
    archive = ParetoArchive(objs, reference_point={"acc": 0.0, "size": 5.0})
    archive.add(0, {"acc": 0.8, "size": 3.0}, {"recipe": "a"})
    archive.add(1, {"acc": 0.6, "size": 1.0}, {"recipe": "b"})
    archive.add(2, {"acc": 0.5, "size": 2.0}, {"recipe": "dominated"})
    out = tmp_path / "front.json"
    out.write_text("stale")  # replaced, not appended to
    archive.export_front(out)
    doc = json.loads(out.read_text())
    assert [e["trial_id"] for e in doc["front"]] == [0, 1]
    assert doc["front"][0] == {"trial_id": 0, "values": {"acc": 0.8, "size": 3.0},
                               "payload": {"recipe": "a"}}
    assert doc["hypervolume"] == pytest.approx(2.8)
    assert doc["reference_point"] == {"acc": 0.0, "size": 5.0}
    assert doc["objectives"] == [{"name": "acc", "direction": "maximize"},
                                 {"name": "size", "direction": "minimize"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front.json"]  # no temp file left


def test_export_front_refuses_nan_payload_and_leaves_no_temp(tmp_path):
    archive = ParetoArchive([Objective("a")])
    archive.add(0, {"a": 1.0}, {"bad": math.nan})
    with pytest.raises(ValueError):
        archive.export_front(tmp_path / "front.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "x", None])
def test_invalid_objective_value_names_the_objective(bad):
    archive = ParetoArchive([Objective("acc"), Objective("latency_ms", "minimize")])
    with pytest.raises(ValueError, match="latency_ms"):
        archive.add(0, {"acc": 0.5, "latency_ms": bad})
    assert len(archive) == 0 and archive.n_added == 0


def test_missing_objective_names_the_objective():
    archive = ParetoArchive([Objective("acc"), Objective("latency_ms", "minimize")])
    with pytest.raises(ValueError, match="latency_ms"):
        archive.add(0, {"acc": 0.5})


def test_reference_point_validation():
    with pytest.raises(ValueError, match="reference point.*'b'"):
        ParetoArchive([Objective("a"), Objective("b")], reference_point={"a": 0.0})
    with pytest.raises(ValueError, match="'a'"):
        ParetoArchive([Objective("a")], reference_point={"a": math.nan})


def test_objective_validation_and_transform():
    with pytest.raises(ValueError, match="direction"):
        Objective("a", "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate"):
        ParetoArchive([Objective("a"), Objective("a", "minimize")])
    assert Objective("a", "maximize").to_min(2.0) == -2.0
    assert Objective("a", "minimize").to_min(2.0) == 2.0


def test_duplicate_trial_id_on_front_rejected():
    archive = ParetoArchive([Objective("a"), Objective("b")])
    archive.add(0, {"a": 1.0, "b": 0.0})
    with pytest.raises(ValueError, match="trial_id 0"):
        archive.add(0, {"a": 0.0, "b": 1.0})


def test_dominates_helper():
    archive = ParetoArchive([Objective("acc"), Objective("size", "minimize")])
    assert archive.dominates({"acc": 0.9, "size": 1.0}, {"acc": 0.8, "size": 1.0})
    assert not archive.dominates({"acc": 0.9, "size": 1.0}, {"acc": 0.9, "size": 1.0})
    assert not archive.dominates({"acc": 0.9, "size": 2.0}, {"acc": 0.8, "size": 1.0})


@given(m=st.integers(1, 3), n=st.integers(0, 60), block=st.integers(1, 9),
       seed=st.integers(0, 10_000), ties=st.booleans())
@settings(max_examples=60, deadline=None)
def test_add_many_gives_the_front_and_history_of_one_add_at_a_time(m, n, block, seed, ties):
    """The block-wise rejection of `add_many` (how a 100,000-trial log is read) must change
    nothing: the same members, the same hypervolume after every trial."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, (n, m)) if ties else rng.random((n, m))  # ties: duplicates
    objectives = [Objective(f"o{i}", "maximize" if i % 2 else "minimize") for i in range(m)]
    reference = {f"o{i}": (-1.0 if i % 2 else 5.0) for i in range(m)}
    trials = [(t, {f"o{i}": float(v[i]) for i in range(m)}) for t, v in enumerate(values)]
    one, many = ParetoArchive(objectives, reference), ParetoArchive(objectives, reference)
    for t, v in trials:
        one.add(t, v)
    many.add_many(trials, block=block)
    assert [(e.trial_id, e.values) for e in many.front()] == \
        [(e.trial_id, e.values) for e in one.front()]
    assert many.history == one.history and many.n_added == one.n_added


def test_add_many_names_a_bad_value_as_add_does():
    archive = ParetoArchive([Objective("a", "maximize")])
    with pytest.raises(ValueError, match="objective 'a' is not finite"):
        archive.add_many([(0, {"a": 1.0}), (1, {"a": float("nan")})])
