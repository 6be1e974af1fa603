"""The package's shape holds: layers without cycles (import-linter, contracts in
pyproject.toml), no module importing another's private names, and the refactors behind them
leaving what a run directory depends on unchanged (config digests, old checkpoints)."""

from __future__ import annotations

import ast
import json
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from evomerge.errors import ConfigError
from evomerge.search_config import SearchConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the package under `root`, with the contracts in pyproject.toml."""
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=root,
                          capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_layer_contracts_hold():
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_an_upward_import_breaks_the_layer_contract(tmp_path):
    """The contract is not vacuous: a recipe reaching up into the run breaks it, even from
    inside a function (the way cycles used to be hidden)."""
    shutil.copytree(ROOT / "evomerge", tmp_path / "evomerge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    recipe = tmp_path / "evomerge" / "recipe.py"
    recipe.write_text(recipe.read_text() + "\n\ndef _late():\n    import evomerge.run.loop\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    assert "evomerge.recipe -> evomerge.run.loop" in out.stdout


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("evomerge"):
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{a.name}"
                      for a in node.names if a.name.startswith("_")]
    return found


def test_no_module_imports_another_modules_private_names():
    files = sorted((ROOT / "evomerge").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    assert [hit for f in files for hit in _private_imports(f)] == []


def test_config_digests_are_unchanged():
    """Digests are how a run directory recognises its config: the configs (and one config
    per controller), read as a run directory's frozen copy is read, digest as they did before
    controllers had their own settings models and before baselines and top-k re-scoring
    existed, so existing runs still resume (and run on as they ran)."""
    want = json.loads((ROOT / "tests" / "data" / "config_digests.json").read_text())
    import yaml

    for key, digest in want.items():
        if key.startswith("configs/"):
            data = yaml.safe_load((ROOT / key).read_text())
            data.pop("zoo", None)
            for ev in (data.get("task") or {}).get("evaluators") or []:
                # added to the shipped configs with validation splits: a run of the config
                # as it was before froze it without one
                ev.pop("validation_fraction", None)
        else:
            _, kind, extra = key.split(" ", 2)
            data = {"budget": 5, "task": {"kind": "synthetic", "dimension": 3},
                    "controller": {"kind": kind, **ast.literal_eval(extra)}}
        frozen = SearchConfig.model_validate(data, context={"frozen": True})
        assert frozen.digest() == digest, key
        assert frozen.rescore_top == 0
        if frozen.task.kind == "merge":
            assert frozen.task.baselines == []


def _synthetic(tmp_path: Path, controller: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({"budget": 5, "task": {"kind": "synthetic", "dimension": 3},
                                "controller": controller}))
    return path


def test_an_old_frozen_config_with_every_controllers_keys_still_loads(tmp_path):
    """Run directories frozen before each controller had its own settings kept every kind's
    keys at their defaults; a key of another kind set by hand is still an error."""
    old = {"kind": "cmaes", "sigma0": 0.2, "archive_size": 20, "alpha": 1.0, "sigma": 0.1,
           "sampler": "tpe", "allow_high_dimension": False, "sample_reward": "one"}
    cfg = load_config(_synthetic(tmp_path, old), frozen=True)
    assert cfg.controller.kind == "cmaes" and cfg.controller.sigma0 == 0.2
    assert "alpha" not in cfg.to_yaml()
    with pytest.raises(ConfigError, match="controller: alpha: an option of m2n2, not of cmaes"):
        load_config(_synthetic(tmp_path, {**old, "alpha": 0.5}), frozen=True)
    with pytest.raises(ConfigError, match="controller: alpha: an option of m2n2, not of cmaes"):
        load_config(_synthetic(tmp_path, {"kind": "cmaes", "alpha": 1.0}))
    with pytest.raises(ConfigError, match=r"controller.sigma0: Input should be greater than 0"):
        load_config(_synthetic(tmp_path, {"kind": "cmaes", "sigma0": -1}))


def test_a_checkpoint_pickled_by_the_single_module_run_still_loads(tmp_path, monkeypatch):
    """Checkpoints written while the run was one module hold `evomerge.run.Timing`."""
    import evomerge.run
    from evomerge.run.directory import RunDirectory
    from evomerge.run.loop import Timing

    @dataclass
    class OldTiming:
        controller: float = 1.0
        evaluation: float = 2.0
        logging: float = 3.0
        wall: float = 4.0

    OldTiming.__module__, OldTiming.__qualname__ = "evomerge.run", "Timing"
    monkeypatch.setattr(evomerge.run, "Timing", OldTiming, raising=False)
    blob = pickle.dumps({"trials": 3, "timing": OldTiming()})
    monkeypatch.delattr(evomerge.run, "Timing")
    assert b"evomerge.run" in blob
    (tmp_path / "checkpoint.pkl").write_bytes(blob)
    ckpt = RunDirectory(tmp_path).load_checkpoint()
    assert ckpt["timing"] == Timing(1.0, 2.0, 3.0, 4.0)


def test_reading_a_config_loads_no_heavy_package():
    """`evomerge report`, config checks and the controller registry stay light: the config
    layer reads the method and controller registries, never torch, transformers, Ray or
    lm-eval (they load when a model or a worker is built)."""
    code = ("import sys, evomerge.search_config, evomerge.run.directory; print(sorted(m for m in "
            "('torch', 'transformers', 'ray', 'lm_eval') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
