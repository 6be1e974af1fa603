"""Optuna's study lives in its journal storage, never in a pickle of Optuna's objects: runs
stopped, killed and resumed repeat the uninterrupted run exactly, the checkpoint loads without
optuna, and a journal that no longer matches its checkpoint is refused by name. Real optuna
throughout (CI runs this file on the newest optuna and on the oldest pyproject allows)."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from evomerge.run.errors import RunError
from evomerge.run.search_run import SearchRun
from evomerge.search.optuna_search import JOURNAL, OptunaSearch
from evomerge.search.protocol import Candidate, Result

from .conftest import pickled_modules, write_yaml

pytestmark = pytest.mark.optuna  # CI runs these on the lowest optuna allowed too


def config(tmp_path: Path, sampler: str, budget: int, every: int, seconds: float = 0.0,
           name: str = "cfg.yaml") -> Path:
    return write_yaml(tmp_path / name, {
        "name": "o", "seed": 5, "budget": budget, "checkpoint_every": every,
        "controller": {"kind": "optuna", "sampler": sampler},
        "task": {"kind": "synthetic", "dimension": 3, "median_seconds": seconds,
                 "tail": 0.0}})


def trials(run_dir: Path) -> list[tuple]:
    """What must repeat exactly: each trial's number, id, genome and objectives."""
    lines = [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines()]
    return [(x["trial"], x["id"], x["genome"], x["objectives"], x["status"]) for x in lines]




def assert_no_optuna_in_checkpoint(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = (run_dir / "checkpoint.pkl").read_bytes()
    assert "optuna" not in pickled_modules(blob)
    # and it loads with optuna impossible to import
    with monkeypatch.context() as m:
        for name in [n for n in sys.modules if n == "optuna" or n.startswith("optuna.")]:
            m.setitem(sys.modules, name, None)
        state = pickle.loads(blob)["controller"]
    assert set(state) == {"best_f", "best_x", "journal_bytes", "journal_tail", "trials"}
    assert state["journal_bytes"] <= (run_dir / JOURNAL).stat().st_size


@pytest.mark.parametrize(("sampler", "budget", "every", "stop"), [
    ("tpe", 40, 10, 27),  # past TPE's 10 random startup trials
    ("nsga2", 130, 20, 87),  # past a generation (50) into the genetic one
    ("gp", 13, 5, 11),  # past GP's 10 startup trials (it is slow: ~2 s an ask)
])
def test_a_stopped_run_resumes_to_the_same_trials(tmp_path, monkeypatch, sampler, budget,
                                                   every, stop):
    cfg = config(tmp_path, sampler, budget, every)
    SearchRun.create(cfg, tmp_path / "whole").run()
    parts = tmp_path / "parts"
    SearchRun.create(cfg, parts).run(stop_after=stop)  # the journal ran ahead of the checkpoint
    ahead = (parts / JOURNAL).stat().st_size
    assert_no_optuna_in_checkpoint(parts, monkeypatch)
    assert pickle.loads((parts / "checkpoint.pkl").read_bytes())["controller"][
        "journal_bytes"] < ahead
    SearchRun.open(parts).run()
    whole, resumed = trials(tmp_path / "whole"), trials(parts)
    assert len(whole) == budget
    assert resumed == whole
    assert_no_optuna_in_checkpoint(parts, monkeypatch)
    # the journal is Optuna's own: its public file storage reads the study back
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(parts / JOURNAL)))
    study = optuna.load_study(study_name="evomerge", storage=storage)
    assert [t.number for t in study.trials] == list(range(budget))
    assert [list(t.params.values()) for t in study.trials] == [x[2] for x in whole]


def test_a_run_killed_mid_write_resumes_to_the_same_trials(tmp_path):
    """SIGKILL at a random moment: the journal may end in a torn line past the checkpoint;
    resume cuts it back and the run goes on as if it had never stopped."""
    budget = 60
    cfg = config(tmp_path, "tpe", budget, 7, seconds=0.02)
    SearchRun.create(cfg, tmp_path / "whole").run()
    run_dir = tmp_path / "killed"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "evomerge.cli", "search", str(cfg), "--run-dir",
           str(run_dir), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = run_dir / "trials.jsonl"
    deadline = time.monotonic() + 120
    while (not log.exists() or log.read_bytes().count(b"\n") < 25) \
            and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(float(np.random.default_rng().uniform(0, 0.1)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = log.read_bytes().count(b"\n")
    assert 0 < done < budget, "the kill should land mid-run"
    res = subprocess.run([sys.executable, "-m", "evomerge.cli", "resume", str(run_dir), "-q"],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert trials(run_dir) == trials(tmp_path / "whole")


def test_a_run_without_its_checkpoint_starts_the_study_again(tmp_path):
    """No checkpoint (killed before its first): the stale journal is replaced and the whole
    trial log replays."""
    cfg = config(tmp_path, "tpe", 20, 5)
    SearchRun.create(cfg, tmp_path / "whole").run()
    run_dir = tmp_path / "r"
    SearchRun.create(cfg, run_dir).run(stop_after=14)
    (run_dir / "checkpoint.pkl").unlink()
    (run_dir / "state.json").unlink()
    SearchRun.open(run_dir).run()
    assert trials(run_dir) == trials(tmp_path / "whole")


def test_a_journal_that_does_not_match_the_checkpoint_is_refused_by_name(tmp_path):
    cfg = config(tmp_path, "tpe", 20, 5)
    run_dir = tmp_path / "r"
    SearchRun.create(cfg, run_dir).run(stop_after=12)  # checkpoint at 10
    journal = run_dir / JOURNAL
    text = journal.read_bytes()
    log_before = (run_dir / "trials.jsonl").read_bytes()
    recorded = pickle.loads((run_dir / "checkpoint.pkl").read_bytes())["controller"]
    edited = bytearray(text)
    edited[recorded["journal_bytes"] - 30] ^= 1  # one bit, in what the checkpoint counted
    cases = {
        "holds 100 bytes but the checkpoint records": text[:100],
        "are not the ones the checkpoint records": bytes(edited),
    }
    for message, broken in cases.items():
        journal.write_bytes(broken)
        with pytest.raises(RunError, match=message) as exc:
            SearchRun.open(run_dir).run()
        assert str(journal) in str(exc.value) and "checkpoint.pkl" in str(exc.value)
        assert journal.read_bytes() == broken  # nothing was cut or written
        assert (run_dir / "trials.jsonl").read_bytes() == log_before
    journal.unlink()
    with pytest.raises(RunError, match=re.escape(f"{journal}: missing")):
        SearchRun.open(run_dir).run()
    journal.write_bytes(text)
    SearchRun.open(run_dir).run()
    assert len(trials(run_dir)) == 20
    assert recorded["journal_bytes"] < len(text)


def test_a_checkpoint_of_a_pickled_study_is_refused_clearly(tmp_path):
    """Checkpoints written before the journal held a pickled study: say what to do."""
    cfg = config(tmp_path, "tpe", 20, 5)
    run_dir = tmp_path / "r"
    SearchRun.create(cfg, run_dir).run(stop_after=5)
    ckpt = pickle.loads((run_dir / "checkpoint.pkl").read_bytes())
    ckpt["controller"] = {"blob": b"an old pickled study"}
    (run_dir / "checkpoint.pkl").write_bytes(pickle.dumps(ckpt))
    with pytest.raises(RunError, match="checkpoint.pkl: .*pickled Optuna study.*new run"):
        SearchRun.open(run_dir).run()


def objectives(x: np.ndarray) -> dict[str, float]:
    return {"f": -float(np.sum((x - 0.3) ** 2)), "g": float(np.sum(x))}


def _answer(c: OptunaSearch, cand: Candidate) -> None:
    values = objectives(cand.genome)
    status = "failed" if cand.id % 17 == 5 else "ok"  # failed trials count too
    c.tell([(cand, Result(cand.id, values["f"], values, status=status))])


def test_nsga2_resumes_with_trials_outstanding(tmp_path):
    """Several workers: a checkpoint holds trials asked but not told, which resume re-issues
    (their results are told by number to a controller that never asked them)."""
    lo, hi = np.zeros(4), np.ones(4)
    objs = [("f", "maximize"), ("g", "minimize")]

    def make() -> OptunaSearch:
        return OptunaSearch(lo, hi, objs, "nsga2", seed=2, x0=np.full(4, 0.5),
                            journal=tmp_path / JOURNAL)

    live = make()
    pending: list[Candidate] = []
    asked: list[np.ndarray] = []
    state = None
    while len(asked) < 140:  # past two NSGA-II generations of 50
        while len(pending) < 3:
            (cand,) = live.ask()
            pending.append(cand)
            asked.append(cand.genome)
        if len(asked) == 80 and state is None:
            state = pickle.dumps(live.state_dict())
            out = list(pending)
        _answer(live, pending.pop(0))
    assert state is not None and "optuna" not in pickled_modules(state)
    resumed = make()
    resumed.load_state_dict(pickle.loads(state))
    pending, again = list(out), [c.genome for c in out]
    assert [c.id for c in out] == [77, 78, 79]
    while len(asked[:77]) + len(again) < 140:
        while len(pending) < 3:
            (cand,) = resumed.ask()
            pending.append(cand)
            again.append(cand.genome)
        _answer(resumed, pending.pop(0))
    assert np.array_equal(np.array(asked[77:]), np.array(again))
    assert np.array_equal(asked[0], np.full(4, 0.5))  # x0 first, as enqueued


def test_without_a_run_directory_the_state_is_the_journal_text():
    c = OptunaSearch(np.zeros(2), np.ones(2), [("f", "maximize")], "tpe", seed=1)
    for _ in range(12):
        (cand,) = c.ask()
        _answer(c, cand)
    state = pickle.loads(pickle.dumps(c.state_dict()))
    assert set(state) == {"best_f", "best_x", "journal_text"}
    assert all(json.loads(x) for x in state["journal_text"].splitlines())
    clone = OptunaSearch(np.zeros(2), np.ones(2), [("f", "maximize")], "tpe", seed=1)
    clone.load_state_dict(state)
    assert np.array_equal(c.ask()[0].genome, clone.ask()[0].genome)
    assert clone.best_f == c.best_f


def test_nsga2_told_its_box_proposes_what_optunas_own_nsga2_does(monkeypatch):
    """`_BoxNSGAII` skips Optuna's inference of the search space from every trial (3/4 of an
    ask at 2,000 trials) and must not change a single proposal: failed trials included, and
    more than ten genes, so that the order of names (x10 before x2) matters."""
    import optuna

    import evomerge.search.optuna_search as module

    def proposals() -> np.ndarray:
        c = OptunaSearch(np.zeros(12), np.ones(12), [("f", "maximize"), ("g", "minimize")],
                         "nsga2", seed=0)
        out = []
        for _ in range(200):  # 4 generations of NSGA-II's default 50
            cand = c.ask()[0]
            _answer(c, cand)
            out.append(cand.genome)
        return np.array(out)

    boxed = proposals()
    monkeypatch.setitem(module.SAMPLERS, "nsga2", optuna.samplers.NSGAIISampler)
    assert np.array_equal(boxed, proposals())
