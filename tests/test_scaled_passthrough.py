"""mergekit's scaled passthrough slices (`scale`, with tensor filters) as layer routes.

Each stack is built by mergekit 0.1.5 (`run_merge`, on CPU) and by `evomerge merge` from the
same YAML: the tensors must be equal bit for bit and so must the logits; the routed runtime
(which scales module outputs instead of weights) must give the exported model's logits; a
route exports back to a stack that mergekit builds the same and that imports as the same
route; and what a route cannot express is refused by name. Every model path is absolute,
under pytest's tmp directories.

Runs only where the optional `mergekit` extra is installed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.merge.directory import merge_to_directory
from evomerge.merge.errors import MergeError
from evomerge.merge.options import MergeOptions
from evomerge.merge.routed import RouteBuilder
from evomerge.mergekit_yaml import recipe_from_mergekit, recipe_to_mergekit
from evomerge.recipe import Recipe, RecipeError
from evomerge.recipe_file import load_recipe

from .route_families import FAMILIES, load, write_model
from .test_merge_cli import load_dir
from .test_mergekit_examples import assert_same_model, build

pytest.importorskip("mergekit")
pytestmark = pytest.mark.mergekit

ZERO_BRANCHES = [{"filter": "o_proj", "value": 0.0}, {"filter": "down_proj", "value": 0.0},
                 {"value": 1.0}]


def damped(a: Path) -> dict:
    """The published shape: a's layers, then layers 1-2 again with their residual branches
    (o_proj, down_proj) scaled to zero."""
    return {"slices": [{"sources": [{"model": str(a), "layer_range": [0, 3]}]},
                       {"sources": [{"model": str(a), "layer_range": [1, 3],
                                     "parameters": {"scale": ZERO_BRANCHES}}]}],
            "merge_method": "passthrough", "dtype": "float32"}


def levels(a: Path, b: Path) -> dict:
    """Every level and form mergekit reads: top-level, slice-level and source-level settings
    (the source's first), gradients over a slice's layers (and a one-layer slice, t = 1),
    filters on norms and on the source's layer index, negative and string-typed values."""
    return {
        "merge_method": "passthrough", "dtype": "float32",
        "parameters": {"scale": [{"filter": "input_layernorm", "value": 0.5}, {"value": 1.0}]},
        "slices": [
            {"sources": [{"model": str(a), "layer_range": [0, 2],
                          "parameters": {"scale": [{"filter": "layers.1.", "value": 0.75}]}}],
             "parameters": {"scale": [{"filter": "mlp", "value": [0.2, 0.9]}]}},
            {"sources": [{"model": str(b), "layer_range": [1, 2]}],
             "parameters": {"scale": [2.0, 0.6]}},
            {"sources": [{"model": str(b), "layer_range": [0, 3],
                          "parameters": {"scale": [
                              {"filter": "down_proj", "value": [1.5, -0.5]},
                              {"filter": "k_proj", "value": "5e-1"}]}}]},
        ],
    }


def write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sides(tmp_path: Path) -> dict[str, Path]:
    out = {s: tmp_path / s for s in ("mergekit", "evomerge")}
    for d in out.values():
        d.mkdir()
    return out


@torch.no_grad()
def logits(model_dir: Path) -> torch.Tensor:
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    return load(model_dir)(ids).logits


@pytest.mark.parametrize("case, dtype", [("damped", "float32"), ("levels", "float32"),
                                         ("levels", "float16"), ("levels", "bfloat16")])
def test_scaled_stack_matches_mergekit_bit_for_bit(case, dtype, zoo, tmp_path, monkeypatch):
    """Weights and logits equal to mergekit's. In 16 bits mergekit multiplies in its `dtype`,
    and so does evomerge (the dtype it stores)."""
    cfg = damped(zoo["a"]) if case == "damped" else levels(zoo["a"], zoo["b"])
    cfg["dtype"] = dtype
    side = sides(tmp_path)
    theirs = build([cfg], side["mergekit"], "mergekit", monkeypatch)
    ours = build([cfg], side["evomerge"], "evomerge", monkeypatch)
    assert_same_model(ours, theirs, exact=True)
    assert torch.equal(logits(ours), logits(theirs))
    weights = load_dir(ours)
    assert all(t.dtype == getattr(torch, dtype) for t in weights.values())
    if case == "damped":  # the repeated layers' residual branches, and nothing else, are zero
        zero = sorted(k for k, v in weights.items() if v.abs().max() == 0)
        assert zero == sorted(f"model.layers.{i}.{t}.weight" for i in (3, 4)
                              for t in ("self_attn.o_proj", "mlp.down_proj"))
    else:  # each hop holds its levels' conditions, gradients read at its own t
        recipe = load_recipe(write(tmp_path / "stack.yml", cfg))
        assert [len(h.tensor_scale or []) for h in recipe.route] == [4, 4, 1, 4, 4, 4]
        # layer 1 of b, twice: as the one-layer slice (t = 1: 0.6 everywhere) and at t = 0.5
        assert recipe.route[2].tensor_scale[0].value == 0.6
        assert recipe.route[4].tensor_scale[0].value == 0.5


def test_routed_runtime_gives_the_exported_models_logits(zoo, tmp_path):
    """The runtime multiplies module outputs (zero copies), the export multiplies weights."""
    recipe = load_recipe(write(tmp_path / "stack.yml", levels(zoo["a"], zoo["b"])))
    builder = RouteBuilder([s.model for s in recipe.sources])
    model = builder.build(recipe)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        runtime = model(ids).logits
    merge_to_directory(recipe, tmp_path / "out", MergeOptions())
    exported = logits(tmp_path / "out")
    assert torch.allclose(runtime, exported, atol=1e-5, rtol=1e-5), \
        float((runtime - exported).abs().max())
    # the hooks follow the candidate: the same route unscaled gives the unscaled logits
    bare = recipe.model_copy(update={"route": [h.model_copy(update={"tensor_scale": None})
                                               for h in recipe.route]})
    with torch.no_grad():
        unscaled = builder.build(bare)(ids).logits
        fresh = RouteBuilder([s.model for s in recipe.sources]).build(bare)(ids).logits
    assert torch.equal(unscaled, fresh)
    assert (unscaled - runtime).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_every_route_family_matches_mergekit_and_the_runtime(family, tmp_path, monkeypatch):
    """Mistral, Qwen2 (biased q/k/v) and Gemma2 (post-norms, tied head) too: the runtime's
    logits equal the exported model's (input scales as well), and the weights mergekit's
    where mergekit builds the stack (it keeps a Qwen2 or Gemma2 source's `layer_types`, which
    transformers 5 refuses for another layer count)."""
    a = write_model(family, tmp_path / "a", 3, seed=0)
    cfg = damped(a)
    cfg["slices"][1]["sources"][0]["parameters"]["scale"] = [
        {"filter": "self_attn", "value": 0.5}, {"filter": "mlp", "value": 1.25}]
    if family in ("llama", "mistral"):
        side = sides(tmp_path)
        theirs = build([cfg], side["mergekit"], "mergekit", monkeypatch)
        ours = build([cfg], side["evomerge"], "evomerge", monkeypatch)
        assert_same_model(ours, theirs, exact=True)
    recipe = recipe_from_mergekit(cfg)
    hops = [h.model_copy(update={"scale": 0.8 if k == 4 else 1.0})
            for k, h in enumerate(recipe.route)]
    recipe = recipe.model_copy(update={"route": hops})
    merge_to_directory(recipe, tmp_path / "out", MergeOptions())
    with torch.no_grad():
        ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
        runtime = RouteBuilder([str(a)]).build(recipe)(ids).logits
    exported = logits(tmp_path / "out")
    assert torch.allclose(runtime, exported, atol=1e-5, rtol=1e-5), \
        float((runtime - exported).abs().max())


def test_export_round_trip_and_mergekit_builds_the_export(zoo, tmp_path, monkeypatch):
    """Stack → route → `export-recipe --format mergekit` → the same route, and a stack that
    mergekit builds into evomerge's weights."""
    recipe = load_recipe(write(tmp_path / "stack.yml", levels(zoo["a"], zoo["b"])))
    assert recipe_from_mergekit(recipe_to_mergekit(recipe)).route == recipe.route
    res = CliRunner().invoke(app, ["export-recipe", str(tmp_path / "stack.yml"), "--format",
                                   "mergekit"])
    assert res.exit_code == 0, res.output
    exported = yaml.safe_load(res.output)
    assert [s["sources"][0]["layer_range"] for s in exported["slices"]] == \
        [[0, 1], [1, 2], [1, 2], [0, 1], [1, 2], [2, 3]]
    side = sides(tmp_path)
    theirs = build([exported], side["mergekit"], "mergekit", monkeypatch)
    ours = build([levels(zoo["a"], zoo["b"])], side["evomerge"], "evomerge", monkeypatch)
    assert_same_model(ours, theirs, exact=True)


def test_a_hand_written_route_exports_with_its_ends_pinned(zoo, tmp_path, monkeypatch):
    """A hop's tensor_scale touches only its layer; mergekit would apply the first slice's to
    the embeddings and the last's to the final norm and head, so the export pins those to 1."""
    a = str(zoo["a"])
    route = {"method": "passthrough", "sources": [{"model": a}], "dtype": "float32",
             "route": [{"source": 0, "layer": 0, "tensor_scale": [{"value": 0.5}]},
                       {"source": 0, "layer": 1},
                       {"source": 0, "layer": 2,
                        "tensor_scale": [{"filter": "norm", "value": 2.0}]}]}
    stack = recipe_to_mergekit(Recipe.from_dict(route))
    assert stack["slices"][0]["sources"][0]["parameters"]["scale"][0] == \
        {"filter": "model.embed_tokens.weight", "value": 1.0}
    side = sides(tmp_path)
    theirs = build([stack], side["mergekit"], "mergekit", monkeypatch)
    merge_to_directory(Recipe.from_dict(route), side["evomerge"] / "out", MergeOptions())
    assert_same_model(side["evomerge"] / "out", theirs, exact=True)
    built = load_dir(theirs)
    assert torch.equal(built["model.norm.weight"], load_dir(zoo["a"])["model.norm.weight"])


def refused_stack(**scales) -> dict:
    """A two-slice stack of model `m` with the given `parameters` per level."""
    first = {"sources": [{"model": "m", "layer_range": [0, 2]}]}
    last = {"sources": [{"model": "m", "layer_range": [1, 3]}]}
    for key, value in scales.items():
        target = {"first": first["sources"][0], "first_slice": first,
                  "last": last["sources"][0]}.get(key)
        if target is not None:
            target["parameters"] = value
    cfg = {"merge_method": "passthrough", "slices": [first, last]}
    if "top" in scales:
        cfg["parameters"] = scales["top"]
    return cfg


@pytest.mark.parametrize("scales, match", [
    ({"first": {"scale": 0.5}},
     r"stack\.yml: slices\[0\]\.sources\[0\]\.parameters\.scale: mergekit would multiply "
     r"model\.embed_tokens\.weight by 0\.5 too \(no filter\)"),
    ({"first_slice": {"scale": [{"filter": "embed", "value": 0.0}]}},
     r"slices\[0\]\.parameters\.scale: .*model\.embed_tokens\.weight by 0 too "
     r"\(filter 'embed'\)"),
    ({"last": {"scale": [{"filter": "norm", "value": 2}]}},
     r"slices\[1\]\.sources\[0\]\.parameters\.scale: .*model\.norm\.weight by 2"),
    ({"top": {"scale": [{"filter": "o_proj", "value": 0}, {"value": 0.9}]}},
     r"stack\.yml: parameters\.scale: .*model\.embed_tokens\.weight by 0\.9"),
    ({"last": {"scale": "half"}},
     r"slices\[1\]\.sources\[0\]\.parameters\.scale: expected a finite number.*'half'"),
    ({"first": {"scale": True}}, r"parameters\.scale: expected a finite number.*True"),
    ({"last": {"scale": [{"fliter": "o_proj", "value": 0}]}},
     r"parameters\.scale\[0\]: expected \{filter: \.\.\., value: \.\.\.\}"),
    ({"last": {"scale": [{"filter": 3, "value": 0}]}}, r"scale\[0\]\.filter: expected a substring"),
    ({"last": {"scale": [{"filter": "o_proj", "value": []}]}},
     r"scale\[0\]\.value: an empty gradient"),
    ({"last": {"scale": [{"filter": "o_proj", "value": [0, "x"]}]}},
     r"scale\[0\]\.value\[1\]: expected a finite number"),
    ({"last": {"scale": [{"filter": "o_proj", "value": float("inf")}]}},
     r"scale\[0\]\.value: expected a finite number"),
])
def test_unsupported_scales_are_refused_by_slice_and_filter(scales, match):
    with pytest.raises(RecipeError, match=match):
        recipe_from_mergekit(refused_stack(**scales), "stack.yml")


def test_other_passthrough_parameters_are_named_and_ignored(caplog):
    with caplog.at_level(logging.WARNING, logger="evomerge"):
        recipe = recipe_from_mergekit(refused_stack(last={"weight": 0.5}), "stack.yml")
    assert "slices[1].sources[0].parameters.weight: not used by passthrough" in caplog.text
    assert all(h.tensor_scale is None for h in recipe.route)


@pytest.mark.parametrize("family, scale, match", [
    ("qwen2", [{"filter": "q_proj.weight", "value": 0.5}],
     r"route\[3\]\.tensor_scale \(layer 1 of sources\[0\] .*\): multiplies "
     r"self_attn\.q_proj\.weight by 0\.5 \(filter 'q_proj\.weight'\) but "
     r"self_attn\.q_proj\.bias by 1 \(no entry matches\)"),
    ("gemma2", [{"filter": "input_layernorm", "value": 0.5}],
     r"route\[3\]\.tensor_scale .*: multiplies input_layernorm\.weight by 0\.5 \(filter "
     r"'input_layernorm'\); gemma2 norms multiply by \(1 \+ weight\)"),
])
def test_scales_a_route_cannot_run_are_refused_and_nothing_is_written(family, scale, match,
                                                                      tmp_path):
    a = write_model(family, tmp_path / "a", 3, seed=0)
    cfg = damped(a)
    cfg["slices"][1]["sources"][0]["parameters"]["scale"] = scale
    recipe = recipe_from_mergekit(cfg, "stack.yml")
    with pytest.raises(MergeError, match=match):
        merge_to_directory(recipe, tmp_path / "out", MergeOptions())
    with pytest.raises(MergeError, match=match):
        RouteBuilder([str(a)]).build(recipe)
    assert not (tmp_path / "out").exists()


def test_a_filter_matching_nothing_is_warned_about(zoo, tmp_path, caplog):
    """mergekit ignores it; it is probably a typo. A filter that matches in some hops only
    (`layers.1.`, by the source's layer index) is not."""
    cfg = damped(zoo["a"])
    cfg["slices"][1]["sources"][0]["parameters"]["scale"] = [{"filter": "o_prj", "value": 0}]
    with caplog.at_level(logging.WARNING, logger="evomerge"):
        merge_to_directory(recipe_from_mergekit(cfg), tmp_path / "out", MergeOptions())
    assert "'o_prj' match no tensor" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="evomerge"):
        merge_to_directory(recipe_from_mergekit(levels(zoo["a"], zoo["b"])), tmp_path / "lv",
                           MergeOptions())
    assert "match no tensor" not in caplog.text


def test_an_entry_after_an_unfiltered_one_is_refused():
    with pytest.raises(RecipeError, match=r"route\[0\]\.tensor_scale: entry 1 never applies"):
        Recipe.from_dict({"method": "passthrough", "sources": [{"model": "m"}],
                          "route": [{"source": 0, "layer": 0, "tensor_scale": [
                              {"value": 0.5}, {"filter": "o_proj", "value": 0.0}]}]})


def test_a_stored_dtype_other_than_mergekits_working_dtype_is_warned_about(caplog):
    """mergekit multiplies in `dtype` and then casts to `out_dtype`; evomerge multiplies in the
    dtype it stores, which rounds differently when the two differ."""
    cfg = refused_stack(last={"scale": [{"filter": "o_proj", "value": 0.3}]})
    with caplog.at_level(logging.WARNING, logger="evomerge"):
        recipe_from_mergekit({**cfg, "dtype": "float32", "out_dtype": "bfloat16"}, "stack.yml")
    assert "stack.yml: out_dtype: mergekit multiplies the scaled tensors in float32" in \
        caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="evomerge"):
        recipe_from_mergekit({**cfg, "dtype": "bfloat16"}, "stack.yml")
    assert "out_dtype" not in caplog.text
