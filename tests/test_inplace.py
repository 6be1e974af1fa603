"""In-place candidates: the live model equals, bit for bit, what `evomerge merge` writes."""

from __future__ import annotations

import pytest
import torch

from evomerge.merge.directory import merge_to_directory
from evomerge.merge.errors import MergeError
from evomerge.merge.inplace import CandidateBuilder
from evomerge.recipe import Recipe

from .test_merge_cli import load_dir


def _recipes(zoo, dtype: str | None) -> list[tuple[str, dict]]:
    base = str(zoo["base"])
    a, b = str(zoo["a"]), str(zoo["b"])
    two = [{"model": a}, {"model": b}]
    out = [
        ("linear-per-group", {"method": "linear", "sources": [
            {"model": a, "parameters": {"weight": {"groups": [0.2, 0.7, 0.4]}}},
            {"model": b, "parameters": {"weight": 0.6}}]}),
        ("task_arithmetic-per-kind", {"method": "task_arithmetic", "base": base,
                                      "parameters": {"lambda": 0.8}, "sources": [
            {"model": a, "parameters": {"weight": {"attention": 0.3, "mlp": 0.9,
                                                   "default": 0.5}}},
            {"model": b, "parameters": {"weight": 0.4}}]}),
        ("ties-gradient", {"method": "ties", "base": base, "sources": [
            {"model": a, "parameters": {"weight": 0.7, "density": [0.2, 0.8]}},
            {"model": b, "parameters": {"weight": {"attention": 0.3, "default": 0.5},
                                        "density": 0.5}}]}),
        ("dare_ties", {"method": "dare_ties", "base": base, "seed": 7, "sources": [
            {"model": a, "parameters": {"weight": 0.5, "density": 0.3}},
            {"model": b, "parameters": {"weight": 0.5, "density": {"groups": [0.9, 0.2]}}}]}),
        ("dare_linear", {"method": "dare_linear", "base": base, "sources": [
            {"model": a, "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": b, "parameters": {"weight": 0.4, "density": 0.7}}]}),
        ("breadcrumbs_ties", {"method": "breadcrumbs_ties", "base": base, "sources": [
            {"model": a, "parameters": {"weight": 0.6, "density": 0.8, "gamma": 0.05}},
            {"model": b, "parameters": {"weight": 0.4, "density": 0.5, "gamma": 0.02}}]}),
        ("breadcrumbs-filters", {"method": "breadcrumbs", "base": base, "sources": [
            {"model": a, "parameters": {"weight": [{"filter": "q_proj", "value": 0.1},
                                                   {"value": 0.5}], "density": 0.9}},
            {"model": b, "parameters": {"weight": 0.5, "density": 0.6}}]}),
        ("ties-slices", {"method": "ties", "base": base, "sources": two, "slices": [
            {"layers": [0, 1], "parameters": {"weight": 0.3, "density": 0.4}},
            {"layers": [1, 3], "parameters": {"weight": 0.8, "density": 0.9},
             "source_parameters": [{"weight": 0.1}]}]}),
        ("slerp", {"method": "slerp", "base": base, "sources": [{"model": a}],
                   "parameters": {"t": [0.1, 0.9]}}),
    ]
    for _, r in out:
        if dtype:
            r["dtype"] = dtype
    return out


@pytest.mark.parametrize(("dtype", "cache"), [(None, None), ("bfloat16", None),
                                              (None, 0), (None, 20_000)])
def test_live_model_is_bit_identical_to_evomerge_merge(zoo, tmp_path, dtype, cache):
    """Also with the selection cache off (0) and too small to hold every tensor (20 kB),
    so each recipe runs cached, computed and mixed selections; the recipes share the
    builder, so later ones reuse entries made for other densities and DARE seeds."""
    builder = CandidateBuilder(str(zoo["base"]), [str(zoo["a"]), str(zoo["b"])], dtype=dtype,
                               cache_bytes=cache)
    slerp_builder = CandidateBuilder(str(zoo["base"]), [str(zoo["a"])], dtype=dtype)
    model_id = id(builder.model)
    for name, data in _recipes(zoo, dtype):
        recipe = Recipe.from_dict(data, name)
        b = slerp_builder if name == "slerp" else builder
        live = b.build(recipe)
        assert id(live) == model_id or b is slerp_builder  # one live model, reused
        merge_to_directory(recipe, tmp_path / name)
        want = load_dir(tmp_path / name)
        got = live.state_dict()
        assert set(want) <= set(got), name
        for tensor, w in want.items():
            assert got[tensor].dtype == w.dtype, (name, tensor)
            assert torch.equal(got[tensor], w), f"{name}: {tensor} differs"
        assert b.last is not None and b.last.tensors == len(want)
    c = builder.cache
    assert c.used <= c.budget
    assert (c.used > 0) == (cache != 0)
    assert (c.refused > 0) == (cache is not None)  # auto holds every entry here


def test_builder_rebuilds_without_leftovers_and_runs_forward(zoo):
    builder = CandidateBuilder(str(zoo["base"]), [str(zoo["a"]), str(zoo["b"])])
    lin = {"method": "linear", "sources": [{"model": str(zoo["a"])}, {"model": str(zoo["b"])}]}
    r1 = Recipe.from_dict({**lin, "sources": [{**s, "parameters": {"weight": w}} for s, w in
                                             zip(lin["sources"], (1.0, 0.0), strict=True)]})
    r2 = Recipe.from_dict({**lin, "sources": [{**s, "parameters": {"weight": w}} for s, w in
                                             zip(lin["sources"], (0.0, 1.0), strict=True)]})
    ids = torch.tensor([[5, 6, 7, 8]])
    first = builder.build(r1)(ids).logits.clone()
    second = builder.build(r2)(ids).logits.clone()
    again = builder.build(r1)(ids).logits
    assert not torch.equal(first, second)
    assert torch.equal(first, again)
    want = load_dir(zoo["a"])
    got = builder.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_builder_refuses_what_it_cannot_build_exactly(zoo):
    builder = CandidateBuilder(str(zoo["base"]), [str(zoo["a"]), str(zoo["b"])])
    other = Recipe.from_dict({"method": "linear", "sources": [{"model": str(zoo["c"])},
                                                              {"model": str(zoo["b"])}]})
    with pytest.raises(MergeError, match="sources"):
        builder.build(other)
    bf16 = Recipe.from_dict({"method": "linear", "dtype": "bfloat16",
                             "sources": [{"model": str(zoo["a"])}, {"model": str(zoo["b"])}]})
    with pytest.raises(MergeError, match="dtype"):
        builder.build(bf16)
    with pytest.raises(MergeError, match="no such model directory"):
        CandidateBuilder(None, [str(zoo["a"]) + "-missing"])
