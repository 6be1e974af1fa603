"""Tensor kinds: the per-architecture tables, the name patterns they fall back to, and the
mergekit filters that stand for kinds on export."""

from __future__ import annotations

import pytest
import yaml

from evomerge.mergekit_yaml import recipe_to_mergekit
from evomerge.models.architecture import (
    ARCHITECTURES,
    MERGEKIT_KIND_ORDER,
    ArchitectureTable,
    mergekit_filters,
    pattern_kind,
    tables_index,
    template_of,
    tensor_kind,
    tensor_site,
)
from evomerge.recipe import Recipe

MIXTRAL = ("model.layers.{layer}.block_sparse_moe.gate.weight",
           "model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight",
           "model.layers.{layer}.block_sparse_moe.experts.{expert}.w2.weight",
           "model.layers.{layer}.block_sparse_moe.experts.{expert}.w3.weight")


def names(table: ArchitectureTable, layer: int = 3, expert: int = 5):
    """(tensor name, kind) for every entry of a table, indices filled in."""
    for kind, templates in table.tensors.items():
        for t in templates:
            yield t.format(layer=layer, expert=expert), kind


@pytest.mark.parametrize("template", MIXTRAL)
@pytest.mark.parametrize(("layer", "expert"), [(0, 0), (17, 7), (31, 12)])
def test_mixture_of_experts_weights_and_router_are_mlp(template, layer, expert):
    name = template.format(layer=layer, expert=expert)
    site = tensor_site(name, 32)
    assert (site.kind, site.layer) == ("mlp", layer)
    # the patterns alone would lump them into "other": the table is what classifies them
    assert pattern_kind(name) == "other"


def test_transformers_5_moe_names_are_mlp_by_table_and_by_pattern_alike():
    for name in ("model.layers.2.mlp.gate.weight", "model.layers.2.mlp.experts.gate_up_proj",
                 "model.layers.2.mlp.experts.down_proj"):
        assert tensor_kind(name) == pattern_kind(name) == "mlp"


@pytest.mark.parametrize("table", [t for t in ARCHITECTURES if t.family != "mixtral"],
                         ids=lambda t: t.family)
def test_dense_tables_agree_with_the_patterns(table):
    """The tables change no dense model's kinds: the same recipe, the same weights."""
    for name, kind in names(table):
        assert tensor_kind(name) == kind == pattern_kind(name), name


def test_names_no_table_lists_fall_back_to_the_patterns():
    unlisted = {
        "model.layers.4.self_attn.rotary_emb.inv_freq": "attention",
        "gpt_neox.layers.2.attention.query_key_value.weight": "attention",
        "gpt_neox.embed_in.weight": "embed",
        "embed_out.weight": "head",
        "transformer.blocks.1.ffn.experts.mlp.w1": "mlp",  # DBRX: no table, patterns say mlp
        "model.layers.1.block_sparse_moe.experts.0.w4.weight": "other",  # not Mixtral's
        "model.layers.1.block_sparse_moe.gate.bias": "other",
        "foo.bar": "other",
    }
    for name, kind in unlisted.items():
        assert template_of(name) not in tables_index()
        assert tensor_kind(name) == kind, name


def test_templates_match_any_index_and_only_numeric_segments():
    assert template_of("model.layers.12.block_sparse_moe.experts.3.w1.weight") == \
        "model.layers.#.block_sparse_moe.experts.#.w1.weight"
    assert template_of("transformer.h.0.ln_1.weight") == "transformer.h.#.ln_1.weight"
    assert tensor_kind("model.layers.123.block_sparse_moe.experts.64.w2.weight") == "mlp"


def test_tables_that_disagree_are_refused():
    a = ArchitectureTable("a", ("A",), {"mlp": ("model.layers.{layer}.x.weight",)})
    b = ArchitectureTable("b", ("B",), {"attention": ("model.layers.{layer}.x.weight",)})
    with pytest.raises(ValueError, match=r"model\.layers\.#\.x\.weight is mlp"):
        tables_index((a, b))


def _first_filter(name: str, filters: dict[str, tuple[str, ...]]) -> str | None:
    """The kind whose exported condition mergekit applies to `name` (the first filter that
    is a substring of it, in export order)."""
    for kind in MERGEKIT_KIND_ORDER:
        if any(f in name for f in filters[kind]):
            return kind
    return None


@pytest.mark.parametrize("table", ARCHITECTURES, ids=lambda t: t.family)
def test_exported_filters_pick_exactly_each_kinds_tensors(table):
    """A kind map exported for a model of this family gives each tensor, in mergekit, the
    value its kind gives it in evomerge."""
    filters = mergekit_filters(table.architectures[0])
    for name, kind in names(table):
        assert _first_filter(name, filters) == (None if kind == "other" else kind), name


def test_unknown_architectures_export_the_default_filters():
    assert mergekit_filters(None) == mergekit_filters("SomethingForCausalLM") == {
        "embed": ("embed_tokens",), "head": ("lm_head",), "norm": ("norm",),
        "attention": ("self_attn",), "mlp": ("mlp",)}


def test_a_kind_map_exports_with_the_models_filters():
    recipe = Recipe.from_dict({"method": "ties", "base": "b", "sources": [
        {"model": "x", "parameters": {"weight": {"mlp": 0.3, "norm": 0.9, "default": 1.0},
                                      "density": [{"filter": "mlp", "value": 0.5},
                                                  {"value": 1.0}]}}]})

    def exported(arch):
        return recipe_to_mergekit(recipe, architecture=arch)["models"][0]["parameters"]

    assert exported("LlamaForCausalLM") == exported(None) == {
        "weight": [{"filter": "norm", "value": 0.9}, {"filter": "mlp", "value": 0.3},
                   {"value": 1.0}],
        "density": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}]}
    assert exported("MixtralForCausalLM") == {
        "weight": [{"filter": "norm", "value": 0.9}, {"filter": "mlp", "value": 0.3},
                   {"filter": "block_sparse_moe", "value": 0.3}, {"value": 1.0}],
        "density": [{"filter": "mlp", "value": 0.5},
                    {"filter": "block_sparse_moe", "value": 0.5}, {"value": 1.0}]}
    gradient = recipe.model_copy(update={"parameters": {"lambda": {"mlp": [0.5, 1.5]}}})
    text = yaml.safe_dump(recipe_to_mergekit(gradient, architecture="MixtralForCausalLM"))
    assert "&id" not in text  # each condition holds its own copy: no YAML anchors
