"""Outputs name no folder of the machine that merged: model cards, recipe files, mergekit YAML.

Sources appear as the recipe file wrote them (relative paths, hub ids with the revision read
from the local cache); recipe files written into model directories name local models relative
to that directory, so merging them again works from anywhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from evomerge.cli import app

from .conftest import write_yaml
from .test_merge_cli import load_dir

REV = "1" * 40
runner = CliRunner()


def run_cli(*args: str | Path) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def hub_cache(zoo, tmp_path, monkeypatch) -> Path:
    """A local HF cache holding `acme/tiny-c` (a copy of zoo c) at revision REV; offline."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-c"
    shutil.copytree(zoo["c"], repo / "snapshots" / REV)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def project(zoo, tmp_path, hub_cache, monkeypatch) -> Path:
    """recipes/ties.yaml naming ../models/{base,a} (relative to the recipe) and a hub id,
    used from another working directory."""
    models = tmp_path / "project" / "models"
    models.mkdir(parents=True)
    for k in ("base", "a"):
        shutil.copytree(zoo[k], models / k)
    (tmp_path / "project" / "recipes").mkdir()
    write_yaml(tmp_path / "project" / "recipes" / "ties.yaml", {
        "method": "ties", "base": "../models/base", "tokenizer_source": "acme/tiny-c",
        "sources": [{"model": "../models/a", "parameters": {"weight": 0.6, "density": 0.5}},
                    {"model": "acme/tiny-c", "parameters": {"weight": 0.4, "density": 0.7}}]})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "project"


def _texts(d: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in d.iterdir()
            if p.suffix in (".md", ".yaml", ".yml", ".json", ".jinja")}


def _assert_no_machine_paths(texts: dict[str, str], tmp_path: Path) -> None:
    """No absolute path under pytest's base folder (the zoo and this test's folder)."""
    root = tmp_path.parent
    for name, text in texts.items():
        for path in {str(root), str(root.resolve())}:
            assert path not in text, (name, text)


def test_model_card_and_recipe_name_sources_as_written(project, tmp_path, monkeypatch):
    out = tmp_path / "out" / "merged"
    run_cli("merge", project / "recipes" / "ties.yaml", out)
    texts = _texts(out)
    assert {"README.md", "evomerge_recipe.yaml", "config.json"} <= set(texts)
    _assert_no_machine_paths(texts, tmp_path)
    card = texts["README.md"]
    assert "Base model: `../models/base`" in card and "- `../models/a`" in card
    assert f"- `acme/tiny-c` (Hugging Face hub `acme/tiny-c`, revision `{REV}`)" in card
    rec = yaml.safe_load(texts["evomerge_recipe.yaml"])
    # local paths relative to the model directory; the hub id pinned to its revision
    assert rec["base"] == "../../project/models/base"
    assert [s["model"] for s in rec["sources"]] == ["../../project/models/a",
                                                    f"acme/tiny-c@{REV}"]
    assert rec["tokenizer_source"] == f"acme/tiny-c@{REV}"

    # merging the written recipe again, from yet another directory, gives the same model
    (tmp_path / "third").mkdir()
    monkeypatch.chdir(tmp_path / "third")
    run_cli("merge", out / "evomerge_recipe.yaml", tmp_path / "again")
    x, y = load_dir(out), load_dir(tmp_path / "again")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_export_recipe_writes_references_as_written(project, tmp_path):
    src = project / "recipes" / "ties.yaml"
    for fmt in ("mergekit", "evomerge"):
        text = run_cli("export-recipe", src, "--format", fmt)
        _assert_no_machine_paths({fmt: text}, tmp_path)
        assert "../models/base" in text and "../models/a" in text
        assert f"acme/tiny-c@{REV}" in text
    # with -o, local paths are relative to the file's folder: it merges from anywhere
    target = tmp_path / "exports" / "deep" / "ties_mk.yml"
    target.parent.mkdir(parents=True)
    run_cli("export-recipe", src, "-o", target)
    text = target.read_text()
    _assert_no_machine_paths({"mk": text}, tmp_path)
    assert "../../project/models/base" in text and "merge_method: ties" in text
    run_cli("merge", src, tmp_path / "direct")
    run_cli("merge", target, tmp_path / "via_mergekit_yaml")
    x, y = load_dir(tmp_path / "direct"), load_dir(tmp_path / "via_mergekit_yaml")
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_revision_pinned_hub_ids_resolve_from_the_cache(project, tmp_path):
    recipe = write_yaml(tmp_path / "pinned.yaml", {
        "method": "linear", "sources": [{"model": f"acme/tiny-c@{REV}"},
                                        {"model": "acme/tiny-c"}]})
    run_cli("merge", recipe, tmp_path / "pinned")
    missing = write_yaml(tmp_path / "missing.yaml", {
        "method": "linear", "sources": [{"model": f"acme/tiny-c@{'2' * 40}"},
                                        {"model": "acme/tiny-c"}]})
    res = runner.invoke(app, ["merge", str(missing), str(tmp_path / "nope")])
    assert res.exit_code != 0 and f"acme/tiny-c@{'2' * 40}" in res.output


def test_exported_trials_name_no_machine_paths_and_merge_again(zoo, tmp_path, monkeypatch):
    """`evomerge export`: the search config froze absolute paths; the exported model
    directory's README.md, evomerge_recipe.yaml and mergekit_config.yml must not carry them."""
    from evomerge.export import export
    from evomerge.run.search_run import SearchRun

    docs = tmp_path / "docs.txt"
    docs.write_text("".join(f"w{i} w{i + 1} w{i + 2} w{i + 3}\n" for i in range(8)))
    cfg = write_yaml(tmp_path / "search.yaml", {
        "name": "t", "seed": 0, "budget": 2, "checkpoint_every": 1,
        "task": {"kind": "merge", "base": str(zoo["base"]),
                 "sources": [str(zoo["a"]), str(zoo["b"])],
                 "space": {"kind": "ps", "method": "ties", "groups": 1},
                 "evaluators": [{"name": "ppl", "kind": "perplexity", "data": str(docs),
                                 "max_length": 8}],
                 "objectives": [{"name": "ppl", "metric": "perplexity",
                                 "direction": "minimize", "reference": 1e6}],
                 "baselines": []},  # a searched TIES trial: its base is in the YAML
        "controller": {"kind": "random"}})
    SearchRun.create(cfg, tmp_path / "run").run()
    out = tmp_path / "exported" / "best"
    export(tmp_path / "run", out, best=True)
    texts = _texts(out)
    assert {"README.md", "evomerge_recipe.yaml", "mergekit_config.yml"} <= set(texts)
    _assert_no_machine_paths(texts, tmp_path)
    mk = yaml.safe_load(texts["mergekit_config.yml"])
    assert mk["base_model"] == os.path.relpath(zoo["base"], out)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for name in ("evomerge_recipe.yaml", "mergekit_config.yml"):
        run_cli("merge", out / name, tmp_path / f"again_{name}")
        x, y = load_dir(out), load_dir(tmp_path / f"again_{name}")
        assert x.keys() == y.keys()
        for k in x:  # mergekit YAML keeps the recipe's numbers to YAML's float precision
            assert torch.allclose(x[k], y[k], rtol=0, atol=1e-6), (name, k)
