"""`evomerge merge` end to end: real safetensors in, a loadable transformers model out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.kernels import float32 as M

from .conftest import write_yaml

runner = CliRunner()


def run_cli(*args: str, ok: bool = True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0, result.output
    return result


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def ties_recipe(zoo, tmp_path: Path, **extra) -> Path:
    data = {
        "method": "ties",
        "base": str(zoo["base"]),
        "sources": [
            {"model": str(zoo["a"]), "parameters": {"weight": 0.7, "density": [0.2, 0.8]}},
            {"model": str(zoo["b"]), "parameters": {"weight": {"attention": 0.3, "default": 0.5},
                                                    "density": 0.5}},
        ],
    }
    data.update(extra)
    return write_yaml(tmp_path / "recipe.yaml", data)


def test_ties_merge_matches_direct_computation_and_loads_in_transformers(zoo, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    run_cli("merge", ties_recipe(zoo, tmp_path), out, "--shard-size", "50KB")
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    merged = load_dir(out)
    assert set(index["weight_map"]) == set(merged)
    base, a, b = load_dir(zoo["base"]), load_dir(zoo["a"]), load_dir(zoo["b"])
    assert set(merged) == set(base)
    for name, got in merged.items():
        layer = int(name.split("layers.")[1].split(".")[0]) if "layers." in name else None
        t = (layer / 2) if layer is not None else 0.0
        wb = 0.3 if "self_attn" in name else 0.5
        expected = M.ties(base[name], [a[name], b[name]], [0.7, wb], [0.2 + 0.6 * t, 0.5])
        assert torch.allclose(got, expected, atol=1e-6), name
    model = AutoModelForCausalLM.from_pretrained(out)
    sd = model.state_dict()
    assert torch.equal(sd["model.layers.1.mlp.up_proj.weight"],
                       merged["model.layers.1.mlp.up_proj.weight"])
    logits = model(torch.tensor([[1, 5, 9]])).logits
    assert torch.isfinite(logits).all()
    card = (out / "README.md").read_text()
    # sources by path relative to the model directory, never by this machine's absolute path
    assert "method: ties" in card and os.path.relpath(zoo["a"], out) in card
    assert str(zoo["a"]) not in card
    assert (out / "tokenizer.json").exists()


def test_dtype_conversion_and_linear_weights(zoo, tmp_path):
    recipe = write_yaml(tmp_path / "lin.yaml", {
        "method": "linear", "dtype": "bfloat16",
        "sources": [{"model": str(zoo["a"]), "parameters": {"weight": 1.0}},
                    {"model": str(zoo["b"]), "parameters": {"weight": 3.0}}]})
    out = tmp_path / "lin"
    run_cli("merge", recipe, out)
    merged = load_dir(out)
    a, b = load_dir(zoo["a"]), load_dir(zoo["b"])
    name = "model.layers.0.self_attn.q_proj.weight"
    assert merged[name].dtype == torch.bfloat16
    assert torch.equal(merged[name], ((a[name] + 3 * b[name]) / 4).to(torch.bfloat16))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_dare_is_reproducible_from_the_recipe_seed(zoo, tmp_path):
    def merged(seed: int, name: str) -> dict[str, torch.Tensor]:
        r = write_yaml(tmp_path / f"dare{seed}{name}.yaml", {
            "method": "dare_ties", "base": str(zoo["base"]), "seed": seed,
            "sources": [{"model": str(zoo[k]), "parameters": {"density": 0.3}} for k in "abc"]})
        run_cli("merge", r, tmp_path / name, "--threads", "2")
        return load_dir(tmp_path / name)

    one, two, other = merged(1, "x"), merged(1, "y"), merged(2, "z")
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(one[k], other[k]) for k in one)


def test_mergekit_yaml_input_and_export_round_trip(zoo, tmp_path):
    mk = write_yaml(tmp_path / "mk.yaml", {
        "merge_method": "ties", "base_model": str(zoo["base"]), "dtype": "float32",
        "parameters": {"normalize": True, "int8_mask": True},
        "models": [
            {"model": str(zoo["base"])},
            {"model": str(zoo["a"]), "parameters": {
                "weight": [{"filter": "mlp", "value": [0.2, 1.0]}, {"value": 0.5}],
                "density": 0.6}},
            {"model": str(zoo["b"]), "parameters": {"weight": 0.4, "density": 0.6}}]})
    run_cli("merge", mk, tmp_path / "from_mk")
    ours = write_yaml(tmp_path / "ours.yaml", {
        "method": "ties", "base": str(zoo["base"]), "dtype": "float32",
        "sources": [
            {"model": str(zoo["a"]), "parameters": {"weight": {"mlp": [0.2, 1.0],
                                                               "default": 0.5},
                                                    "density": 0.6}},
            {"model": str(zoo["b"]), "parameters": {"weight": 0.4, "density": 0.6}}]})
    run_cli("merge", ours, tmp_path / "from_ours")
    exported = run_cli("export-recipe", ours, "--format", "mergekit").output
    (tmp_path / "exported.yaml").write_text(exported)
    assert "merge_method: ties" in exported
    run_cli("merge", tmp_path / "exported.yaml", tmp_path / "from_export")
    x, y, z = (load_dir(tmp_path / n) for n in ("from_mk", "from_ours", "from_export"))
    for k in x:
        assert torch.equal(x[k], y[k]) and torch.equal(y[k], z[k]), k


def test_groups_export_to_mergekit_per_layer_filters(zoo, tmp_path):
    ours = write_yaml(tmp_path / "g.yaml", {
        "method": "task_arithmetic", "base": str(zoo["base"]),
        "sources": [{"model": str(zoo["a"]), "parameters": {"weight": {"groups": [0.1, 0.9]}}},
                    {"model": str(zoo["b"]), "parameters": {"weight": 0.5}}]})
    run_cli("merge", ours, tmp_path / "g1")
    run_cli("export-recipe", ours, "-o", tmp_path / "g_mk.yaml")
    assert "layers.2." in (tmp_path / "g_mk.yaml").read_text()
    run_cli("merge", tmp_path / "g_mk.yaml", tmp_path / "g2")
    x, y = load_dir(tmp_path / "g1"), load_dir(tmp_path / "g2")
    assert all(torch.equal(x[k], y[k]) for k in x)


# --- bad input ------------------------------------------------------------------------------

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(d: Path, fn) -> None:
    """Apply fn to the tensors of the shard holding the embeddings, and save it back."""
    for f in d.glob("*.safetensors"):
        tensors = load_file(f)
        if "model.embed_tokens.weight" in tensors:
            fn(tensors)
            save_file(tensors, f, metadata={"format": "pt"})


def _assert_clean_failure(tmp_path: Path, out: Path, result, *needles: str) -> None:
    for needle in needles:
        assert needle in result.output, result.output
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_missing_tensor_is_named(zoo, tmp_path):
    bad = _copy(zoo["b"], tmp_path / "bad")
    _rewrite(bad, lambda t: t.pop("model.embed_tokens.weight"))
    # the index still names it, so rewrite the index without it too
    idx = json.loads((bad / "model.safetensors.index.json").read_text())
    idx["weight_map"].pop("model.embed_tokens.weight")
    (bad / "model.safetensors.index.json").write_text(json.dumps(idx))
    out = tmp_path / "out"
    res = run_cli("merge", ties_recipe({**zoo, "b": bad}, tmp_path), out, ok=False)
    _assert_clean_failure(tmp_path, out, res, "missing tensor model.embed_tokens.weight",
                          str(bad))


def test_nonfinite_source_is_refused_unless_allowed(zoo, tmp_path):
    bad = _copy(zoo["a"], tmp_path / "nan")
    _rewrite(bad, lambda t: t["model.embed_tokens.weight"].__setitem__((3, 4), float("nan")))
    recipe = ties_recipe({**zoo, "a": bad}, tmp_path)
    out = tmp_path / "out"
    res = run_cli("merge", recipe, out, ok=False)
    _assert_clean_failure(tmp_path, out, res, "NaN or Inf", "model.embed_tokens.weight", str(bad))
    lin = write_yaml(tmp_path / "lin.yaml", {"method": "linear", "sources": [
        {"model": str(bad), "parameters": {"weight": 0.0}}, {"model": str(zoo["b"])}]})
    run_cli("merge", lin, out, "--allow-nonfinite")
    assert out.exists()


def test_different_architecture_and_shapes_are_refused(zoo, zoo_bf16, tmp_path):
    other = _copy(zoo["b"], tmp_path / "mistral")
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    res = run_cli("merge", ties_recipe({**zoo, "b": other}, tmp_path), out, ok=False)
    _assert_clean_failure(tmp_path, out, res, "architecture MistralForCausalLM", str(other))

    wide = _copy(zoo["b"], tmp_path / "wide")
    _rewrite(wide, lambda t: t.__setitem__("model.embed_tokens.weight", torch.zeros(300, 32)))
    res = run_cli("merge", ties_recipe({**zoo, "b": wide}, tmp_path), out, ok=False)
    _assert_clean_failure(tmp_path, out, res, "model.embed_tokens.weight", "[300, 32]")

    res = run_cli("merge", ties_recipe({**zoo, "b": zoo_bf16["a"]}, tmp_path), out, ok=False)
    _assert_clean_failure(tmp_path, out, res, str(zoo_bf16["a"]))


def test_truncated_safetensors_is_named(zoo, tmp_path):
    bad = _copy(zoo["a"], tmp_path / "trunc")
    shard = sorted(bad.glob("*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    out = tmp_path / "out"
    res = run_cli("merge", ties_recipe({**zoo, "a": bad}, tmp_path), out, ok=False)
    _assert_clean_failure(tmp_path, out, res, "truncated", shard.name)


def test_pickled_weights_need_allow_pickle(zoo, tmp_path):
    pk = tmp_path / "pickled"
    pk.mkdir()
    shutil.copy(zoo["a"] / "config.json", pk / "config.json")
    torch.save(load_dir(zoo["a"]), pk / "pytorch_model.bin")
    out = tmp_path / "out"
    recipe = ties_recipe({**zoo, "a": pk}, tmp_path)
    res = run_cli("merge", recipe, out, ok=False)
    _assert_clean_failure(tmp_path, out, res, "pytorch_model.bin", "--allow-pickle")
    run_cli("merge", recipe, out, "--allow-pickle")
    run_cli("merge", ties_recipe(zoo, tmp_path), tmp_path / "ref")
    x, y = load_dir(out), load_dir(tmp_path / "ref")
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_ties_without_base_is_a_recipe_error(zoo, tmp_path):
    recipe = write_yaml(tmp_path / "nobase.yaml", {
        "method": "ties", "sources": [{"model": str(zoo["a"])}, {"model": str(zoo["b"])}]})
    res = run_cli("merge", recipe, tmp_path / "out", ok=False)
    assert "nobase.yaml" in res.output and "base" in res.output


def test_existing_output_needs_overwrite_and_is_replaced_whole(zoo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "model-00002-of-00002.safetensors"  # a shard of an earlier, larger merge
    stale.write_text("old")
    res = run_cli("merge", ties_recipe(zoo, tmp_path), out, ok=False)
    assert "--overwrite" in res.output and stale.exists()
    run_cli("merge", ties_recipe(zoo, tmp_path), out, "--overwrite")
    assert not stale.exists() and (out / "model.safetensors").exists()
    # a failing merge with --overwrite keeps the previous output intact
    bad = _copy(zoo["a"], tmp_path / "nan")
    _rewrite(bad, lambda t: t["model.embed_tokens.weight"].__setitem__((0, 0), float("inf")))
    before = (out / "model.safetensors").read_bytes()
    run_cli("merge", ties_recipe({**zoo, "a": bad}, tmp_path), out, "--overwrite", ok=False)
    assert (out / "model.safetensors").read_bytes() == before


def test_help_documents_every_option():
    text = run_cli("merge", "--help").output
    for opt in ("--device", "--shard-size", "--threads", "--overwrite", "--allow-nonfinite",
                "--allow-pickle", "--allow-download", "--progress"):
        assert opt in text


@pytest.mark.parametrize("bad", ["12XB", "-1GB", "big"])
def test_bad_shard_size_is_named(zoo, tmp_path, bad):
    res = run_cli("merge", ties_recipe(zoo, tmp_path), tmp_path / "o", "--shard-size", bad,
                  ok=False)
    assert "shard size" in res.output


def test_hub_ids_resolve_from_the_local_cache_only(zoo, tmp_path, monkeypatch):
    """A repo id found in the HF cache merges offline; one that is absent is named clearly."""
    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny-a" / "snapshots" / ("0" * 40)
    shutil.copytree(zoo["a"], snap)
    (cache / "models--acme--tiny-a" / "refs").mkdir()
    (cache / "models--acme--tiny-a" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    recipe = write_yaml(tmp_path / "hub.yaml", {
        "method": "linear", "sources": [{"model": "acme/tiny-a"}, {"model": str(zoo["b"])}]})
    run_cli("merge", recipe, tmp_path / "out")
    a, b, got = load_dir(zoo["a"]), load_dir(zoo["b"]), load_dir(tmp_path / "out")
    k = "model.layers.0.mlp.down_proj.weight"
    assert torch.allclose(got[k], (a[k] + b[k]) / 2)
    missing = write_yaml(tmp_path / "miss.yaml", {
        "method": "linear", "sources": [{"model": "acme/not-here"}, {"model": str(zoo["b"])}]})
    res = run_cli("merge", missing, tmp_path / "out2", ok=False)
    assert "acme/not-here" in res.output and "--allow-download" in res.output
