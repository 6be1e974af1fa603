"""Layer routes (docs/design.md §4) on Llama, Mistral, Qwen2 and Gemma2: the routed runtime shares
the sources' weights and computes the route (logits against a layer-by-layer reference, generation
with the KV cache against generation without), and the exported stock checkpoint reproduces
the runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evomerge.merge.directory import merge_to_directory
from evomerge.merge.errors import MergeError
from evomerge.merge.options import MergeOptions
from evomerge.merge.routed import RouteBuilder
from evomerge.recipe import Recipe

from .route_families import FAMILIES, load, reference_logits, write_model

# repeats layer 1 of B (the KV-cache trap) and runs A's layer 1 twice; scales on every hop
ROUTE = [(0, 0, 1.0), (1, 1, 0.7), (0, 1, 1.3), (1, 1, 1.1), (0, 1, 0.9), (0, 2, 1.2)]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(family, A with 3 layers, B with 2 layers)."""
    out = tmp_path_factory.mktemp(request.param)
    return (request.param, write_model(request.param, out / "a", 3, seed=0),
            write_model(request.param, out / "b", 2, seed=1))


def route_recipe(a: Path, b: Path, route=ROUTE, **extra) -> Recipe:
    return Recipe.from_dict({"method": "passthrough",
                             "sources": [{"model": str(a)}, {"model": str(b)}],
                             "route": [{"source": s, "layer": i, "scale": c}
                                       for s, i, c in route], **extra})


@pytest.fixture(scope="module")
def builder(family) -> RouteBuilder:
    return RouteBuilder([str(family[1]), str(family[2])])


def ids(n: int = 12) -> torch.Tensor:
    return torch.randint(0, 64, (2, n), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_routed_logits_equal_the_layer_by_layer_reference(family, builder):
    _, a, b = family
    model = builder.build(route_recipe(a, b))
    got = model(ids()).logits
    sources = [load(a), load(b)]
    want = reference_logits(sources, ROUTE, ids())
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())
    # the scales matter: the same hops unscaled are another model
    plain = reference_logits(sources, [(s, i, 1.0) for s, i, _ in ROUTE], ids())
    assert (plain - want).abs().max() > 100 * (got - want).abs().max()
    assert model.config.num_hidden_layers == len(ROUTE)


def test_hops_share_the_sources_storage_and_nothing_stays_on_meta(family, builder):
    _, a, b = family
    model = builder.build(route_recipe(a, b))
    layers = model.model.layers
    assert len(layers) == len(ROUTE) and len({id(x) for x in layers}) == len(ROUTE)
    resident = {t.data_ptr() for src in builder.tensors for t in src.values()}
    for k, (s, layer, _) in enumerate(ROUTE):
        for rest, p in layers[k].named_parameters():
            src = builder.tensors[s][f"model.layers.{layer}.{rest}"]
            assert p.data_ptr() == src.data_ptr(), (k, rest)
        assert layers[k].self_attn.layer_idx == k  # its own KV-cache slot
    assert all(p.data_ptr() in resident for p in model.parameters())
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    # non-persistent buffers (rotary frequencies, Gemma's embedding scale) as the source has
    stock = dict(load(a).named_buffers())
    for name, buf in model.named_buffers():
        if name in stock:
            assert torch.equal(buf, stock[name]), name


def test_layer_types_follow_the_hops(family, builder):
    name, a, b = family
    model = builder.build(route_recipe(a, b))
    types = getattr(model.config, "layer_types", None)
    if name in ("llama", "mistral"):
        assert types is None
        return
    want = [load(p).config.layer_types[layer] for p, layer in
            ((a, 0), (b, 1), (a, 1), (b, 1), (a, 1), (a, 2))]
    assert types == want
    assert [x.self_attn.sliding_window is not None for x in model.model.layers] == \
        [t == "sliding_attention" for t in want]


@torch.no_grad()
def test_greedy_generation_with_the_kv_cache_equals_without(family, builder):
    _, a, b = family
    model = builder.build(route_recipe(a, b))
    prompt = ids(5)[:1]
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@torch.no_grad()
def test_repointing_keeps_the_model_object_and_matches_a_fresh_builder(family, builder):
    _, a, b = family
    other = [(0, 0, 1.0), (0, 0, 0.8), (1, 0, 1.0), (0, 2, 1.0)]
    first = builder.build(route_recipe(a, b, other))
    x = first(ids()).logits.clone()
    again = builder.build(route_recipe(a, b))
    assert again is first
    back = builder.build(route_recipe(a, b, other))(ids()).logits
    fresh = RouteBuilder([str(a), str(b)]).build(route_recipe(a, b, other))(ids()).logits
    assert torch.equal(back, x) and torch.equal(fresh, x)


# A's embeddings scaled by 0.5, B's final norm and head: a tied head must come untied
ENDS_ELSEWHERE = [(0, 0, 0.5), (0, 1, 1.0), (1, 0, 1.5), (1, 1, 0.8)]


@pytest.mark.parametrize("route, extra", [(ROUTE, {}), (ENDS_ELSEWHERE, {"head_source": 1})],
                         ids=["route", "scaled-embeddings-head-of-b"])
@torch.no_grad()
def test_export_is_a_stock_checkpoint_that_reproduces_the_runtime(family, builder, tmp_path,
                                                                  route, extra):
    name, a, b = family
    recipe = route_recipe(a, b, route, **extra)
    merge_to_directory(recipe, tmp_path / "out", MergeOptions())
    exported = load(tmp_path / "out")
    assert exported.config.num_hidden_layers == len(route)
    assert exported.config.evomerge_route["hops"] == [list(h) for h in route]
    live = builder.build(recipe)
    runtime = live(ids()).logits
    # sliding or full attention per hop survives the round trip through config.json
    assert getattr(exported.config, "layer_types", None) == \
        getattr(live.config, "layer_types", None)
    got = exported(ids()).logits
    assert torch.allclose(got, runtime, atol=1e-5, rtol=1e-5), float((got - runtime).abs().max())
    want = reference_logits([load(a), load(b)], route, ids(), head=extra.get("head_source"))
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    card = (tmp_path / "out" / "README.md").read_text()
    last = len(route) - 1
    assert "layer route" in card and f"| {last} | {route[-1][0]} | {route[-1][1]} |" in card
    assert exported.config.tie_word_embeddings is (name == "gemma2" and route is ROUTE)


@pytest.mark.parametrize("change, match", [
    (dict(route=[(0, 0, 1.0), (1, 5, 1.0), (0, 2, 1.0)]), r"route\[1\]\.layer: 5 is not a layer"),
    (dict(route=[(0, 1, 1.0), (0, 2, 1.0)]), r"route\[0\]: starts with layer 1"),
    (dict(route=[(0, 0, 1.0), (1, 1, 1.0)]), r"route\[1\]: ends with layer 1 of sources\[1\]"),
    (dict(route=[(0, 0, 1.0), (1, 1, 1.0)], head_source=1), None),  # B's head: fine
])
def test_bad_routes_are_refused_by_name_and_nothing_is_written(family, tmp_path, change, match):
    _, a, b = family
    change = dict(change)
    recipe = route_recipe(a, b, change.pop("route"), **change)
    if match is None:
        merge_to_directory(recipe, tmp_path / "out", MergeOptions())
        assert (tmp_path / "out" / "model.safetensors").exists()
        return
    with pytest.raises(MergeError, match=match):
        merge_to_directory(recipe, tmp_path / "out", MergeOptions())
    with pytest.raises(MergeError, match=match):
        RouteBuilder([str(a), str(b)]).build(recipe)
    assert list(tmp_path.iterdir()) == []


def test_sources_of_another_hidden_size_are_refused_and_nothing_is_written(tmp_path):
    from .route_families import family_config

    a = write_model("llama", tmp_path / "a", 2, seed=0)
    cfg = family_config("llama", 2)
    cfg.hidden_size, cfg.head_dim = 48, 12
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "wide")
    recipe = route_recipe(a, tmp_path / "wide", [(0, 0, 1.0), (1, 0, 1.0), (0, 1, 1.0)])
    with pytest.raises(MergeError, match=r"sources\[1\] .*hidden_size 48 differs from 32"):
        merge_to_directory(recipe, tmp_path / "out", MergeOptions())
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "wide"]
