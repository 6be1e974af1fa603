"""Safe by default: high-dimensional controllers, named errors through the CLI, Ctrl-C,
progress, the report table, --version and --help."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.progress import Progress
from evomerge.run.search_run import SearchRun
from evomerge.search_config import ConfigError, load_config

from .conftest import write_yaml

runner = CliRunner()
DIGITS_GENES = 19_210  # the digits MLP's flat parameter vector


def digits(tmp_path: Path, controller: dict, budget: int = 40, name: str = "cfg.yaml",
           **extra) -> Path:
    return write_yaml(tmp_path / name, {"name": "t", "seed": 1, "budget": budget,
                                        "checkpoint_every": 10, "controller": controller,
                                        **extra})


def merge_search(path: Path, sources: list[str], space: dict, base: str | None = None
                 ) -> Path:
    """A merge search config whose objective comes from a callable (never reached here)."""
    task = {"kind": "merge", "sources": sources, "space": space,
            "evaluators": [{"name": "q", "kind": "callable", "function": "math:fsum",
                            "metrics": ["q"]}],
            "objectives": [{"name": "q", "metric": "q"}]}
    if base:
        task["base"] = base
    return write_yaml(path, {"budget": 10, "controller": {"kind": "random"}, "task": task})


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# --- 1. defaults that cannot lose a run ------------------------------------------------------
@pytest.mark.parametrize(("controller", "bound"), [
    # separable CMA-ES: a fixed number of n-vectors, whatever the trial count (~18 MB here)
    ({"kind": "cmaes"}, 160 * DIGITS_GENES * 8),
    ({"kind": "m2n2", "archive_size": 6, "mutation_sigma": 0.01}, 2 * 6 * DIGITS_GENES * 8),
    ({"kind": "random"}, 4 * DIGITS_GENES * 8),
], ids=lambda v: v["kind"] if isinstance(v, dict) else "")
def test_checkpoints_stay_small_at_high_dimension(tmp_path, controller, bound):
    cfg = digits(tmp_path, controller, budget=40)
    run = SearchRun.create(cfg, tmp_path / "run")
    run.run()
    size = (tmp_path / "run" / "checkpoint.pkl").stat().st_size
    assert size < bound, f"{controller['kind']}: {size / 2**20:.1f} MiB"
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    ckpt = pickle.loads((tmp_path / "run" / "checkpoint.pkl").read_bytes())
    assert state["checkpoint_bytes"] == size and state["trials"] == ckpt["trials"]
    # CMA-ES checkpoints between generations only (popsize 33 here: the last one at 33)
    assert ckpt["trials"] == (33 if controller["kind"] == "cmaes" else 40)
    if controller["kind"] == "cmaes":  # went separable by itself, with CSA (docs/design.md §5)
        inner = pickle.loads(pickle.loads((tmp_path / "run" / "checkpoint.pkl").read_bytes())
                             ["controller"]["blob"])
        assert inner["s"].separable and inner["s"].step_size == "csa"
        assert len(inner["x0"]) == DIGITS_GENES


def test_optuna_at_high_dimension_is_refused_before_anything_is_written(tmp_path, caplog):
    cfg = digits(tmp_path, {"kind": "optuna"})
    res = cli("search", cfg, "--run-dir", tmp_path / "run")
    assert res.exit_code == 2
    assert "19210 genes" in res.output and "allow_high_dimension" in res.output
    assert not (tmp_path / "run").exists()
    # allowed on request, with a warning that says what it costs (not run here: at this
    # size Optuna takes minutes per trial on this machine)
    from evomerge.search_config import load_config

    cfg = digits(tmp_path, {"kind": "optuna", "allow_high_dimension": True}, name="allow.yaml")
    with caplog.at_level("WARNING"):
        load_config(cfg).controller.check_dimension(DIGITS_GENES, str(cfg))
    assert "Optuna on 19210 genes; the study's journal grows by ~6.0 MiB per trial" in caplog.text


def synthetic_optuna(tmp_path: Path, budget: int, **controller) -> Path:
    return write_yaml(tmp_path / f"optuna-{budget}.yaml", {
        "name": "t", "seed": 0, "budget": budget,
        "controller": {"kind": "optuna", **controller},
        "executor": {"kind": "simulated", "workers": 64},
        "task": {"kind": "synthetic", "dimension": 16, "median_seconds": 60.0}})


def test_an_optuna_budget_that_would_take_the_driver_hours_is_refused(tmp_path):
    """Each ask models every trial so far (results/bench_driver.md): 100,000 TPE trials
    would keep the driver busy for days while a cluster waits."""
    res = cli("search", synthetic_optuna(tmp_path, 100_000), "--run-dir", tmp_path / "run")
    assert res.exit_code == 2, res.output
    assert "budget: Optuna's tpe sampler models every trial" in res.output
    assert "100,000 trials of 16 genes" in res.output and "allow_large_budget" in res.output
    assert not (tmp_path / "run").exists()
    # a resume that raises the budget that far is refused the same way, the run untouched
    small = synthetic_optuna(tmp_path, 30)
    assert cli("search", small, "--run-dir", tmp_path / "r").exit_code == 0
    before = (tmp_path / "r" / "trials.jsonl").read_bytes()
    res = cli("resume", tmp_path / "r", "--budget", "100000")
    assert res.exit_code == 2 and "allow_large_budget" in res.output
    assert (tmp_path / "r" / "trials.jsonl").read_bytes() == before
    assert "budget: 30" in (tmp_path / "r" / "config.yaml").read_text()
    # an hour's estimate is the line; NSGA-II is cheaper per trial than TPE
    from evomerge.search.optuna_search import optuna_driver_seconds

    spec = load_config(synthetic_optuna(tmp_path, 10_000)).controller
    spec.check_budget(16, 10_000, "c.yaml")  # TPE, 10k trials of 16 genes: ~35 min
    assert optuna_driver_seconds("tpe", 16, 10_000)[1] < 3600
    with pytest.raises(ConfigError, match="allow_large_budget"):
        spec.check_budget(16, 20_000, "c.yaml")
    spec = load_config(synthetic_optuna(tmp_path, 20_000, sampler="nsga2")).controller
    spec.check_budget(16, 20_000, "c.yaml")
    spec = load_config(synthetic_optuna(tmp_path, 100_000, allow_large_budget=True)
                       ).controller
    spec.check_budget(16, 100_000, "c.yaml")  # asked for: allowed


def test_full_covariance_cmaes_is_refused_when_it_cannot_fit(tmp_path, monkeypatch):
    import psutil

    real = psutil.virtual_memory()
    # 2 GiB free: 19,210 genes need ~11 GiB in full covariance
    monkeypatch.setattr(psutil, "virtual_memory",
                        lambda: real._replace(available=2 * 2**30))
    cfg = digits(tmp_path, {"kind": "cmaes", "separable": False})
    with pytest.raises(ConfigError, match=r"controller.separable: full-covariance CMA-ES on "
                                          r"19210 genes needs ~11.0 GiB"):
        SearchRun.create(cfg, tmp_path / "run").run()
    assert not (tmp_path / "run").exists()


def test_resume_changes_nothing_until_it_can_run_and_report_reads_no_controller(tmp_path):
    cfg = digits(tmp_path, {"kind": "m2n2", "archive_size": 4}, budget=30)
    assert cli("search", cfg, "--run-dir", tmp_path / "r", "-q").exit_code == 0
    run_dir = tmp_path / "r"
    frozen = (run_dir / "config.yaml").read_text()
    # report never unpickles the checkpoint (a controller's state can be gigabytes)
    ckpt = (run_dir / "checkpoint.pkl").read_bytes()
    (run_dir / "checkpoint.pkl").write_bytes(b"not a pickle")
    res = cli("report", run_dir, "--json")
    assert res.exit_code == 0 and json.loads(res.output)["trials"] == 30
    # ... while resume does, and fails before touching anything
    res = cli("resume", run_dir, "--budget", "60")
    assert res.exit_code == 2 and "checkpoint.pkl: unreadable checkpoint" in res.output
    assert (run_dir / "config.yaml").read_text() == frozen
    (run_dir / "checkpoint.pkl").write_bytes(ckpt)
    # a deleted log: named by resume and report, and the budget is still not rewritten
    (run_dir / "trials.jsonl").rename(tmp_path / "saved.jsonl")
    for args in (("resume", run_dir, "--budget", "60"), ("report", run_dir)):
        res = cli(*args)
        assert res.exit_code == 2, res.output
        assert "trials.jsonl: holds 0 trial line(s) but the checkpoint records 30" in res.output
    assert (run_dir / "config.yaml").read_text() == frozen
    (tmp_path / "saved.jsonl").rename(run_dir / "trials.jsonl")
    res = cli("resume", run_dir, "--budget", "60", "-q")
    assert res.exit_code == 0, res.output
    assert "budget: 60" in (run_dir / "config.yaml").read_text()
    assert len((run_dir / "trials.jsonl").read_text().splitlines()) == 60


def test_a_merge_search_that_cannot_fit_in_memory_is_refused_before_it_starts(
        tmp_path, zoo, monkeypatch):
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=2**10))
    cfg = merge_search(tmp_path / "s.yaml", [str(zoo["a"]), str(zoo["b"])],
                       {"kind": "ps", "method": "ties"}, base=str(zoo["base"]))
    res = cli("search", cfg, "--run-dir", tmp_path / "run")
    assert res.exit_code == 2
    assert "task: candidate: keeping the base and 2 source(s) resident needs" in res.output
    assert "but cpu has 0.00 GiB available" in res.output
    assert not (tmp_path / "run").exists()


# --- 2. named errors, no tracebacks ---------------------------------------------------------
def test_a_garbage_line_in_the_log_is_named_by_resume_and_report(tmp_path):
    cfg = digits(tmp_path, {"kind": "random"}, budget=20)
    assert cli("search", cfg, "--run-dir", tmp_path / "r", "-q").exit_code == 0
    log = tmp_path / "r" / "trials.jsonl"
    lines = log.read_text().splitlines()
    for garbage in ("}{ not json", "[1, 2, 3]", '{"trial": 7}'):
        log.write_text("\n".join(lines[:7] + [garbage] + lines[8:]) + "\n")
        for args in (("resume", tmp_path / "r", "--budget", "30"), ("report", tmp_path / "r")):
            res = cli(*args)
            assert res.exit_code == 2 and res.exception is None or \
                isinstance(res.exception, SystemExit)
            assert f"{log}: line 8 is not a trial record" in res.output, res.output
            assert "Traceback" not in res.output


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--seed", "-1", "--seed: Input should be greater than or equal to 0 (got -1)"),
    ("--budget", "-5", "--budget: Input should be greater than or equal to 1 (got -5)"),
])
def test_bad_command_line_values_blame_the_flag_and_write_nothing(tmp_path, flag, value, says):
    cfg = digits(tmp_path, {"kind": "random"})
    res = cli("search", cfg, "--run-dir", tmp_path / "r", flag, value)
    assert res.exit_code == 2
    assert says in res.output and str(cfg) not in res.output
    assert not (tmp_path / "r").exists()


def test_options_of_another_controller_are_named(tmp_path):
    cfg = digits(tmp_path, {"kind": "cmaes", "archive_size": 8})
    res = cli("search", cfg, "--run-dir", tmp_path / "r")
    assert res.exit_code == 2
    assert "controller: archive_size: an option of m2n2, not of cmaes" in res.output
    # a run directory's frozen config carries only its controller's keys, and reads back
    cfg = digits(tmp_path, {"kind": "cmaes", "popsize": 8}, budget=8)
    assert cli("search", cfg, "--run-dir", tmp_path / "ok", "-q").exit_code == 0
    frozen = (tmp_path / "ok" / "config.yaml").read_text()
    assert "archive_size" not in frozen and "popsize: 8" in frozen
    res = cli("search", tmp_path / "ok" / "config.yaml", "--run-dir", tmp_path / "again", "-q")
    assert res.exit_code == 0, res.output


def test_frozen_configs_that_list_every_controller_key_still_resume(tmp_path):
    """Run directories written before per-controller keys froze every key at its default."""
    cfg = digits(tmp_path, {"kind": "cmaes", "popsize": 8}, budget=16)
    assert cli("search", cfg, "--run-dir", tmp_path / "r", "--budget", "8", "-q").exit_code == 0
    frozen = tmp_path / "r" / "config.yaml"
    import yaml

    data = yaml.safe_load(frozen.read_text())
    data["controller"].update({"archive_size": 20, "alpha": 1.0, "sigma": 0.1,
                               "sampler": "tpe"})
    frozen.write_text(yaml.safe_dump(data))
    res = cli("resume", tmp_path / "r", "--budget", "16", "-q")
    assert res.exit_code == 0, res.output
    data["controller"]["archive_size"] = 7  # not a default: a real conflict, named
    frozen.write_text(yaml.safe_dump(data))
    res = cli("report", tmp_path / "r")
    assert res.exit_code == 2 and "archive_size: an option of m2n2" in res.output


def test_merge_parameters_out_of_range_are_named(tmp_path, zoo):
    recipe = write_yaml(tmp_path / "r.yaml", {
        "method": "ties", "base": str(zoo["base"]),
        "sources": [{"model": str(zoo["a"]), "parameters": {"weight": 1, "density": 1.5}},
                    {"model": str(zoo["b"]), "parameters": {"density": {"groups": [0.2, -0.5]}}}],
    })
    res = cli("merge", recipe, tmp_path / "out")
    assert res.exit_code == 2
    assert "density: 1.5 is outside [0, 1], the range of density" in res.output
    assert not (tmp_path / "out").exists()
    data = {"method": "ties", "base": str(zoo["base"]),
            "sources": [{"model": str(zoo["a"]), "parameters": {"density": 0.5}},
                        {"model": str(zoo["b"]), "parameters": {"density": {"groups":
                                                                            [0.2, -0.5]}}}]}
    res = cli("merge", write_yaml(tmp_path / "r2.yaml", data), tmp_path / "out")
    assert res.exit_code == 2 and "density.groups[1]: -0.5 is outside [0, 1]" in res.output
    # a search space whose range leaves the parameter's range
    cfg = merge_search(tmp_path / "s.yaml", [str(zoo["a"]), str(zoo["b"])],
                       {"kind": "ps", "method": "ties", "ranges": {"density": [0.1, 1.5]}},
                       base=str(zoo["base"]))
    res = cli("search", cfg, "--run-dir", tmp_path / "run")
    assert res.exit_code == 2
    assert "task.space: ranges.density: [0.1, 1.5] leaves [0, 1]" in res.output


def test_a_missing_local_source_names_the_field_and_the_paths_tried(tmp_path, zoo,
                                                                   monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(zoo["a"], tmp_path / "zoo" / "math")
    (tmp_path / "recipes").mkdir()
    recipe = write_yaml(tmp_path / "recipes" / "r.yaml", {
        "method": "linear", "sources": [{"model": "zoo/math"}, {"model": "zoo/mathh"}]})
    res = cli("merge", recipe, "out")
    assert res.exit_code == 2
    assert (f"{recipe}: sources[1].model: 'zoo/mathh' is not a model directory (tried "
            f"{tmp_path}/zoo/mathh, {tmp_path}/recipes/zoo/mathh); did you mean 'zoo/math'?"
            in res.output), res.output
    assert "download" not in res.output
    cfg = merge_search(tmp_path / "s.yaml", ["zoo/math", "zoo/mathh"],
                       {"kind": "seed_mixture"})
    res = cli("search", cfg, "--run-dir", "run")
    assert res.exit_code == 2 and "download" not in res.output
    assert "task.sources[1]: 'zoo/mathh' is not a model directory" in res.output
    assert not (tmp_path / "run").exists()
    # what may be a hub id (no such local folder): the cache was searched; downloads named
    recipe = write_yaml(tmp_path / "r3.yaml", {
        "method": "linear", "sources": [{"model": "zoo/math"}, {"model": "acme/not-here"}]})
    res = cli("merge", recipe, "out")
    assert res.exit_code == 2
    assert "sources[1].model: acme/not-here: not a local directory and not in the local " \
           "Hugging Face cache" in res.output and "--allow-download" in res.output


def test_overwrite_replaces_only_a_model_directory(tmp_path, zoo, monkeypatch):
    recipe = write_yaml(tmp_path / "r.yaml", {
        "method": "linear", "sources": [{"model": str(zoo["a"])}, {"model": str(zoo["b"])}]})
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "a.py").write_text("code")
    (tmp_path / "notes.txt").write_text("notes")
    cases = [(project, "holds 'src', which a merge does not write"),
             (tmp_path / "notes.txt", "exists and is not a directory"),
             (zoo["a"], "holds the input model"),
             (Path("."), "is the current directory or contains it")]
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for target, says in cases:
        res = cli("merge", recipe, target, "--overwrite")
        assert res.exit_code == 2 and says in res.output, (target, res.output)
    assert (project / "src" / "a.py").read_text() == "code"
    assert (tmp_path / "notes.txt").read_text() == "notes"


def test_two_processes_cannot_run_one_search_and_report_never_repairs(tmp_path):
    cfg = digits(tmp_path, {"kind": "random"}, budget=20)
    assert cli("search", cfg, "--run-dir", tmp_path / "r", "-q").exit_code == 0
    run_dir = tmp_path / "r"
    import fcntl

    with open(run_dir / ".lock", "a+") as held:  # as a running search holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.seek(0)
        held.truncate()
        held.write("4242")
        held.flush()
        res = cli("resume", run_dir, "--budget", "30")
        assert res.exit_code == 2
        assert "another evomerge process (pid 4242) is running this search" in res.output
        with open(run_dir / "trials.jsonl", "a") as f:  # a line being written right now
            f.write('{"trial": 20, "id"')
        assert cli("report", run_dir).exit_code == 0
        assert (run_dir / "trials.jsonl").read_text().endswith('{"trial": 20, "id"')
    res = cli("resume", run_dir, "--budget", "30", "-q")  # the owner's job: it repairs
    assert res.exit_code == 0, res.output
    lines = (run_dir / "trials.jsonl").read_text().splitlines()
    assert [json.loads(x)["trial"] for x in lines] == list(range(30))


@pytest.mark.parametrize("budget", [40, 4])
def test_a_search_whose_trials_all_fail_stops_early_and_says_why(tmp_path, zoo, budget):
    """Whatever the budget: the first min(10, budget) trials all failing is an error, with
    the commonest cause and a non-zero exit."""
    (tmp_path / "broken_eval.py").write_text(
        "def score(model, tokenizer, split):\n    raise KeyError('labels')\n")
    data = yaml.safe_load(merge_search(tmp_path / "s.yaml", [str(zoo["a"]), str(zoo["b"])],
                                       {"kind": "seed_mixture"}).read_text())
    data["budget"] = budget
    data["task"]["evaluators"][0].update(function="broken_eval:score",
                                         python_path=[str(tmp_path)])
    cfg = write_yaml(tmp_path / "s.yaml", data)
    res = cli("search", cfg, "--run-dir", tmp_path / "r")
    n = min(10, budget)
    assert res.exit_code == 2
    assert f"the first {n} trials all failed" in res.output
    assert f"commonest error ({n} of {n}): KeyError: 'labels'" in res.output
    assert f"evomerge resume {tmp_path / 'r'}" in res.output
    res = cli("report", tmp_path / "r")
    assert f"{n} x (first: trial 0) KeyError: 'labels'" in res.output


def test_mixing_up_recipes_and_search_configs_is_named(tmp_path, zoo):
    cfg = digits(tmp_path, {"kind": "random"})
    res = cli("merge", cfg, tmp_path / "out")
    assert res.exit_code == 2 and "this is a search config, not a merge recipe" in res.output
    recipe = write_yaml(tmp_path / "r.yaml", {"method": "linear",
                                              "sources": [{"model": str(zoo["a"])}]})
    res = cli("search", recipe, "--run-dir", tmp_path / "run")
    assert res.exit_code == 2 and "this is a merge recipe, not a search config" in res.output
    # a run of another config says what differs; the config's budget never blames --budget
    assert cli("search", cfg, "--run-dir", tmp_path / "r1", "--budget", "12", "-q"
               ).exit_code == 0
    res = cli("search", cfg, "--run-dir", tmp_path / "r1", "-q")  # config budget 40 < 12? no
    assert res.exit_code == 0, res.output
    other = digits(tmp_path, {"kind": "random", "sigma": 0.5}, name="other.yaml")
    res = cli("search", other, "--run-dir", tmp_path / "r1")
    assert res.exit_code == 2
    assert "controller.sigma: 0.1 in the run, 0.5 here" in res.output


# --- 3. Ctrl-C, progress, report -------------------------------------------------------------
def test_ctrl_c_says_what_was_saved_and_the_run_resumes_exactly(tmp_path):
    cfg = digits(tmp_path, {"kind": "m2n2", "archive_size": 6, "mutation_sigma": 0.01},
                 budget=3000, checkpoint_every=100)
    run_dir = tmp_path / "run"
    exe = str(Path(sys.executable).parent / "evomerge")
    proc = subprocess.Popen([exe, "search", str(cfg), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run_dir / "trials.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_bytes().splitlines()) > 250:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    saved = len(log.read_bytes().splitlines())
    assert 250 < saved < 3000
    assert f"trials are saved in {log}" in err
    assert f"continue with: evomerge resume {run_dir}" in err
    res = cli("resume", run_dir, "-q")
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["trial"] for x in lines] == list(range(3000))
    assert len({x["id"] for x in lines}) == 3000


def test_ctrl_c_during_a_zoo_build_leaves_nothing_half_written(tmp_path):
    exe = str(Path(sys.executable).parent / "evomerge")
    out = tmp_path / "zoo"
    proc = subprocess.Popen([exe, "build-zoo", str(out), "--kind", "skills"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the build has begun writing its temporary sibling
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "nothing half-written" in err and "the same command continues" in err
    assert not out.exists() and not list(tmp_path.iterdir())  # no temporary sibling either


def test_live_view_on_a_terminal_and_plain_lines_otherwise():
    tty = io.StringIO()
    p = Progress("tty", tty)
    p.start(10, 110, "accuracy")
    details = {"best": {"accuracy": 0.61, "loss": 0.2}, "front": 3, "hypervolume": 0.42,
               "workers": ["worker 0: candidate 7 (search, 20%), 3 s", "worker 1: idle"]}
    for done in range(11, 111):
        p.update(done, 0.5 + done / 1000, lambda: details)
        time.sleep(0.002)
    p.close()
    text = tty.getvalue()
    assert "110/110 trials" in text and "best accuracy 0.61" in text and "ETA 0s" in text
    assert "accuracy 0.61  loss 0.2" in text and "3 trial(s), hypervolume 0.42" in text
    assert "worker 0: candidate 7 (search, 20%)" in text and "worker 1: idle" in text
    assert "evomerge resume" in text and text.endswith("\n")
    plain = io.StringIO()
    p = Progress("plain", plain, every=0.0)
    p.start(0, 3, "loss")
    for done in (1, 2, 3):
        p.update(done, 0.25)
    p.close()
    lines = plain.getvalue().splitlines()
    assert lines[0] == "0/3 trials done; a progress line every 0 s"
    assert lines[1].startswith("1/3 trials") and lines[-1].startswith("3/3 trials")
    assert "\r" not in plain.getvalue()
    quiet = io.StringIO()
    p = Progress("quiet", quiet)
    p.start(0, 3, "loss")
    p.update(3, 0.1)
    p.close()
    assert quiet.getvalue() == ""


def test_search_prints_progress_unless_quiet_and_report_prints_a_table(tmp_path):
    cfg = digits(tmp_path, {"kind": "m2n2", "archive_size": 4}, budget=30)
    res = cli("search", cfg, "--run-dir", tmp_path / "r")
    assert res.exit_code == 0
    assert "30/30 trials" in res.output and "best accuracy" in res.output
    assert "see: evomerge report" in res.output
    res = cli("search", cfg, "--run-dir", tmp_path / "q", "--quiet")
    assert "trials/s" not in res.output and "s/trial" not in res.output
    res = cli("report", tmp_path / "r")
    assert res.exit_code == 0
    lines = res.output.splitlines()
    header = next(x for x in lines if "accuracy (search)" in x)
    assert "accuracy (test)" in header
    row = lines[lines.index(header) + 2].split()
    assert all(len(v.replace(".", "").lstrip("0")) <= 4 for v in row[1:])  # rounded
    assert "best by accuracy: trial" in res.output


# --- 6. --version and --help -----------------------------------------------------------------
def test_version_and_help_list_every_command():
    from importlib.metadata import version

    res = cli("--version")
    assert res.exit_code == 0 and res.output.strip() == f"evomerge {version('evomerge')}"
    res = cli("--help")
    assert res.exit_code == 0
    for command in ("merge", "export-recipe", "search", "resume", "report", "export",
                    "build-zoo"):
        line = next((x for x in res.output.splitlines() if f" {command} " in x), None)
        assert line is not None and len(line.split(command, 1)[1].strip()) > 10, command


def test_no_traceback_when_the_run_dir_is_a_file(tmp_path):
    cfg = digits(tmp_path, {"kind": "random"})
    (tmp_path / "afile").write_text("x")
    res = cli("search", cfg, "--run-dir", tmp_path / "afile")
    assert res.exit_code == 2 and "is not a directory" in res.output
    assert os.path.isfile(tmp_path / "afile")
