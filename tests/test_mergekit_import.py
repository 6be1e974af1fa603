"""Reading mergekit YAML: every key is honoured, or refused / warned about by name.

No mergekit needed: these check what evomerge does with a config, not mergekit's output
(test_mergekit_examples compares the two).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.mergekit_yaml import recipe_from_mergekit, recipe_to_mergekit
from evomerge.models.architecture import TensorSite
from evomerge.recipe import Recipe, RecipeError
from evomerge.recipe_file import load_recipe

from .conftest import write_yaml

EXAMPLES = Path(__file__).parent / "data" / "mergekit_examples"
runner = CliRunner()


def ties(zoo, **extra) -> dict:
    cfg = {"merge_method": "ties", "base_model": str(zoo["base"]), "dtype": "float32",
           "models": [{"model": str(zoo["a"]), "parameters": {"weight": 0.5, "density": 0.5}},
                      {"model": str(zoo["b"]), "parameters": {"weight": 0.5, "density": 0.5}}]}
    cfg.update(extra)
    return cfg


def merge(cfg: Path, out: Path, *flags: str):
    return runner.invoke(app, ["merge", str(cfg), str(out), *flags])


@pytest.mark.parametrize("name,method", [("arcee_fusion.yml", "arcee_fusion"),
                                         ("chipalign.yml", "nuslerp")])
def test_shipped_examples_of_other_methods_are_refused_by_name(zoo, tmp_path, monkeypatch,
                                                               name, method):
    (tmp_path / "zoo").symlink_to(zoo["base"].parent)
    monkeypatch.chdir(tmp_path)
    res = merge(EXAMPLES / name, tmp_path / "out")
    assert res.exit_code == 2
    assert f"{name}: merge_method: '{method}' is not supported" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


BAD = {
    "modules": ({"modules": {"decoder": {"models": []}}}, "modules: per-module merges"),
    "override": ({"base_model": {"model": "x/y", "override_architecture": "MistralForCausalLM"}},
                 "base_model.override_architecture"),
    "tokens": ({"tokenizer": {"source": "base", "tokens": {"<x>": {"source": "x/y"}}}},
               "tokenizer.tokens: not supported"),
    "pad": ({"tokenizer": {"source": "base", "pad_to_multiple_of": 64}},
            "tokenizer.pad_to_multiple_of: not supported"),
    "both_tokenizers": ({"tokenizer_source": "base", "tokenizer": {"source": "base"}},
                        "either tokenizer_source: or tokenizer:"),
    "rescale_ties": ({"parameters": {"rescale": True}}, "parameters.rescale: true"),
    "dtype": ({"dtype": "float64"}, "dtype: 'float64' is not supported"),
    "out_dtype": ({"out_dtype": "int8"}, "out_dtype: 'int8' is not supported"),
    "chat_template": ({"chat_template": "{{ x }}"}, "chat_template"),
    "residual": ({"slices": [{"sources": [{"model": "x/a", "layer_range": [0, 3]}],
                              "residual_weight": 0.5}], "models": None},
                 "slices[0].residual_weight: not supported"),
    "slice_base": ({"slices": [{"sources": [{"model": "x/a", "layer_range": [0, 3]}],
                                "base_model": "x/other"}], "models": None},
                   "slices[0].base_model: a per-slice base model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_keys_evomerge_cannot_honour_are_refused_by_name(zoo, tmp_path, case):
    change, needle = BAD[case]
    cfg = {k: v for k, v in {**ties(zoo), **change}.items() if v is not None}
    path = write_yaml(tmp_path / f"{case}.yml", cfg)
    res = merge(path, tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert f"{case}.yml" in res.output and needle in res.output, res.output
    assert "Traceback" not in res.output


def test_dare_rescale_false_and_dare_precision_are_refused(zoo, tmp_path):
    cfg = ties(zoo, merge_method="dare_ties", parameters={"rescale": False})
    res = merge(write_yaml(tmp_path / "d.yml", cfg), tmp_path / "out")
    assert res.exit_code == 2 and "parameters.rescale: false is not supported" in res.output
    cfg = ties(zoo, merge_method="dare_ties", dtype="float16")
    res = merge(write_yaml(tmp_path / "d16.yml", cfg), tmp_path / "out",
                "--match-mergekit-precision")
    assert res.exit_code == 2 and "--match-mergekit-precision: dare_ties" in res.output
    ours = write_yaml(tmp_path / "ours.yaml", {"method": "ties", "base": str(zoo["base"]),
                                               "sources": [{"model": str(zoo["a"])}]})
    res = merge(ours, tmp_path / "out", "--match-mergekit-precision")
    assert res.exit_code == 2 and "compute_dtype" in res.output


def test_ignored_keys_are_warned_about_by_name(zoo, tmp_path, caplog):
    cfg = ties(zoo, out_path="./somewhere", merge_method="dare_ties",
               parameters={"t": 0.3, "int8_mask": True})
    cfg["models"][0]["comment"] = "x"
    path = write_yaml(tmp_path / "w.yml", cfg)
    with caplog.at_level(logging.WARNING, logger="evomerge"):
        load_recipe(path)
    text = caplog.text
    assert "w.yml.out_path: not a mergekit 0.1.5 key" in text
    assert "models[0].comment: not a mergekit 0.1.5 key" in text
    assert "parameters.t: not used by dare_ties" in text
    assert "merge_method: dare_ties: evomerge draws DARE's random drops" in text
    assert "int8_mask" not in text  # the sign mask's dtype: no effect on the weights


def test_low_precision_is_warned_about_or_matched(zoo, zoo_bf16, tmp_path, caplog):
    path = write_yaml(tmp_path / "f16.yml", ties(zoo, dtype="float16"))
    with caplog.at_level(logging.WARNING, logger="evomerge"):
        rec = load_recipe(path)
    assert rec.compute_dtype is None and rec.dtype == "float16"
    assert "f16.yml: dtype: float16: mergekit runs every step of ties in float16" in caplog.text
    assert load_recipe(path, match_mergekit_precision=True).compute_dtype == "float16"
    # no dtype: mergekit merges bf16 sources in bf16
    cfg = ties(zoo_bf16)
    del cfg["dtype"]
    caplog.clear()
    path = write_yaml(tmp_path / "native.yml", cfg)
    with caplog.at_level(logging.WARNING, logger="evomerge"):
        assert load_recipe(path).compute_dtype is None
    assert "native.yml: dtype (not set): the sources are bfloat16" in caplog.text
    assert load_recipe(path, match_mergekit_precision=True).compute_dtype == "bfloat16"
    # out_dtype is the stored dtype; dtype the arithmetic's
    rec = load_recipe(write_yaml(tmp_path / "o.yml", ties(zoo, out_dtype="bfloat16")))
    assert rec.dtype == "bfloat16" and rec.compute_dtype is None


def test_references_filters_and_linear_base_read_as_mergekit_means_them():
    cfg = {"merge_method": "linear", "base_model": {"model": {"path": "org/b", "revision": "r1"}},
           "models": [{"model": "org/a", "parameters": {"weight": [
               {"filter": "attention", "value": 0.2}, {"filter": "mlp", "value": 0.4},
               {"value": 0.9}]}}]}
    rec = recipe_from_mergekit(cfg)
    # linear: mergekit merges the base as one more input
    assert rec.base is None and [s.model for s in rec.sources] == ["org/a", "org/b@r1"]
    n = 3

    def w(name: str, kind: str) -> float:
        return rec.source_param(0, "weight", TensorSite(name, kind, 1, n))

    # a mergekit filter is a substring of the name, even where it spells a tensor kind
    assert w("model.layers.1.post_attention_layernorm.weight", "norm") == 0.2
    assert w("model.layers.1.self_attn.q_proj.weight", "attention") == 0.9
    assert w("model.layers.1.mlp.up_proj.weight", "mlp") == 0.4
    out = recipe_to_mergekit(rec)
    assert out["models"][0]["parameters"]["weight"][0] == {"filter": "attention", "value": 0.2}


def test_export_states_the_precision_evomerge_computes_in():
    r = Recipe.from_dict({"method": "ties", "base": "b", "sources": [{"model": "a"}],
                          "dtype": "bfloat16", "chat_template": "chatml"})
    out = recipe_to_mergekit(r)
    assert (out["dtype"], out["out_dtype"], out["chat_template"]) == ("float32", "bfloat16",
                                                                      "chatml")
    out = recipe_to_mergekit(r.model_copy(update={"compute_dtype": "float16"}))
    assert (out["dtype"], out["out_dtype"]) == ("float16", "bfloat16")
    assert "out_dtype" not in recipe_to_mergekit(r.model_copy(update={"dtype": None}))
    with pytest.raises(RecipeError, match="compute_dtype"):
        Recipe.from_dict({"method": "dare_ties", "base": "b", "sources": [{"model": "a"}],
                          "compute_dtype": "float16"})


def _retokenised(src: Path, dst: Path) -> Path:
    """A copy of `src` whose tokenizer spells one token differently (same vocabulary size)."""
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["zz"] = vocab.pop("w0")
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    return dst


@pytest.mark.parametrize("source", ["union", "base", "other"])
def test_tokenizer_source_over_different_vocabularies_is_refused(zoo, tmp_path, source):
    other = _retokenised(zoo["b"], tmp_path / "b_retok")
    cfg = ties(zoo)
    cfg["models"][1]["model"] = str(other)
    cfg["tokenizer"] = {"source": str(other) if source == "other" else source}
    out = tmp_path / "out"
    res = merge(write_yaml(tmp_path / "t.yml", cfg), out)
    assert res.exit_code == 2, res.output
    name = str(other) if source == "other" else source
    assert f"tokenizer_source: {name}:" in res.output and "different vocabulary" in res.output
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_chat_template_auto_takes_the_commonest_and_names_need_mergekit(zoo, tmp_path,
                                                                        monkeypatch):
    from evomerge.merge.errors import MergeError
    from evomerge.merge.tokenizer import chat_template_text
    from evomerge.models.source import SourceModel

    dirs = []
    for i, template in enumerate(["{{ 'A' }}", "{{ 'B' }}", "{{ 'B' }}"]):
        d = shutil.copytree(zoo["a"], tmp_path / f"m{i}")
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template}))
        dirs.append(SourceModel.open(str(d)))
    assert chat_template_text("auto", dirs) == "{{ 'B' }}"
    assert chat_template_text("auto", [SourceModel.open(str(zoo["a"]))]) is None
    for mod in ("mergekit", "mergekit._data", "mergekit._data.chat_templates"):
        monkeypatch.setitem(sys.modules, mod, None)  # as if the extra were not installed
    with pytest.raises(MergeError, match="chat_template: 'chatml' names one of mergekit's"):
        chat_template_text("chatml", dirs)


def test_tokenizer_keys_round_trip_through_a_written_recipe(zoo, tmp_path):
    cfg = ties(zoo, tokenizer={"source": "base"}, chat_template="{{ messages }} plus a bit")
    run = merge(write_yaml(tmp_path / "t.yml", cfg), tmp_path / "out")
    assert run.exit_code == 0, run.output
    written = yaml.safe_load((tmp_path / "out" / "evomerge_recipe.yaml").read_text())
    assert written["tokenizer_source"] == "base"
    assert written["chat_template"] == "{{ messages }} plus a bit"
    assert "plus a bit" in (tmp_path / "out" / "chat_template.jinja").read_text()
