"""Recipe schema: YAML round trip, field-naming validation errors, parameter resolution."""

from __future__ import annotations

import subprocess
import sys

import pytest

from evomerge.models.architecture import TensorSite
from evomerge.recipe import Recipe, RecipeError, evaluate_value


def _ties(**kw) -> dict:
    data = {
        "method": "ties",
        "base": "b",
        "sources": [{"model": "x", "parameters": {"weight": 0.5, "density": [0.2, 0.8]}},
                    {"model": "y", "parameters": {"weight": {"attention": 1.0, "default": 0.1}}}],
        "parameters": {"lambda": 0.9},
        "dtype": "bfloat16",
        "seed": 7,
    }
    data.update(kw)
    return data


ROUTED = {"method": "passthrough", "sources": [{"model": "x"}, {"model": "y"}],
          "route": [{"source": 0, "layer": 0}, {"source": 1, "layer": 3, "scale": 0.5}]}


def site(name: str, kind: str, layer: int | None, n: int = 5) -> TensorSite:
    return TensorSite(name, kind, layer, n)


def test_yaml_round_trip_is_identity():
    r = Recipe.from_dict(_ties())
    again = Recipe.from_yaml(r.to_yaml())
    assert again == r
    assert again.digest() == r.digest()
    assert Recipe.from_dict(_ties(seed=8)).digest() != r.digest()
    routed = Recipe.from_dict(ROUTED)
    assert Recipe.from_yaml(routed.to_yaml()) == routed
    assert "embed_source" not in routed.to_yaml()  # unset route ends keep digests stable


def test_recipe_module_does_not_import_torch():
    code = ("import sys, evomerge.recipe, evomerge.mergekit_yaml, evomerge.recipe_file; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_ties(base=None), "base"),
        (_ties(method="nope"), "method"),
        (_ties(parameters={"t": 0.5}), "parameters.t"),
        (_ties(sources=[{"model": "x", "parameters": {"lambda": 1}}]),
         "sources[0].parameters.lambda"),
        (_ties(sources=[{"model": "x", "parameters": {"weight": {"groups": []}}}]),
         "weight.groups"),
        (_ties(sources=[{"model": "x", "parameters": {"weight": {"atention": 1}}}]),
         "atention"),
        ({**ROUTED, "route": [{"source": 5, "layer": 0}]}, "route[0].source"),
        ({**ROUTED, "route": []}, "route"),
        ({**ROUTED, "route": [{"source": 0, "layer": 0, "scale": 0.0}]}, "route[0].scale"),
        ({**ROUTED, "head_source": 2}, "head_source"),
        ({**ROUTED, "base": "b"}, "base"),
        (_ties(route=ROUTED["route"]), "method"),
        ({**ROUTED, "route": None}, "route"),
        (_ties(embed_source=0), "embed_source"),
        (_ties(dtype="int8"), "dtype"),
        ({"method": "slerp", "sources": [{"model": "a"}]}, "sources"),
        (_ties(slices=[{"layers": [1, 3]}]), "slices[0].layers"),
    ],
)
def test_validation_errors_name_the_field(data, needle):
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(data, origin="r.yaml")
    assert "r.yaml" in str(err.value)
    assert needle in str(err.value)


def test_gradient_interpolates_over_layers_like_mergekit():
    v = [0.0, 1.0, 0.0]
    assert evaluate_value(v, site("l.layers.0.x", "mlp", 0)) == 0.0
    assert evaluate_value(v, site("l.layers.1.x", "mlp", 1)) == pytest.approx(0.5)
    assert evaluate_value(v, site("l.layers.2.x", "mlp", 2)) == pytest.approx(1.0)
    assert evaluate_value(v, site("l.layers.4.x", "mlp", 4)) == pytest.approx(0.0)
    assert evaluate_value(v, site("model.embed_tokens.weight", "embed", None)) == 0.0
    # mergekit 0.1.5 plans the final norm and head with t = 0 as well
    assert evaluate_value([0.2, 0.9], site("lm_head.weight", "head", None)) == 0.2


def test_groups_are_piecewise_constant():
    v = {"groups": [1.0, 2.0, 3.0]}
    got = [evaluate_value(v, site(f"layers.{i}.w", "mlp", i, 6)) for i in range(6)]
    assert got == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert evaluate_value(v, site("embed_tokens.weight", "embed", None, 6)) == 1.0
    assert evaluate_value(v, site("lm_head.weight", "head", None, 6)) == 3.0


def test_kind_map_and_filter_list():
    kinds = {"attention": 1.0, "mlp": [0.0, 1.0], "default": 5.0}
    assert evaluate_value(kinds, site("layers.0.self_attn.q_proj.weight", "attention", 0)) == 1
    assert evaluate_value(kinds, site("layers.4.mlp.up_proj.weight", "mlp", 4)) == 1.0
    assert evaluate_value(kinds, site("norm.weight", "norm", None)) == 5.0
    assert evaluate_value({"mlp": 1.0}, site("norm.weight", "norm", None)) is None
    conds = [{"filter": "q_proj", "value": 2.0}, {"filter": "attention", "value": 3.0},
             {"value": 4.0}]
    assert evaluate_value(conds, site("layers.0.self_attn.q_proj.weight", "attention", 0)) == 2
    assert evaluate_value(conds, site("layers.0.self_attn.k_proj.weight", "attention", 0)) == 3
    assert evaluate_value(conds, site("layers.0.mlp.up_proj.weight", "mlp", 0)) == 4


def test_precedence_and_defaults():
    r = Recipe.from_dict(_ties())
    s_attn = site("model.layers.2.self_attn.q_proj.weight", "attention", 2)
    s_mlp = site("model.layers.4.mlp.up_proj.weight", "mlp", 4)
    assert r.source_param(0, "weight", s_attn) == 0.5
    assert r.source_param(0, "density", s_mlp) == pytest.approx(0.8)
    assert r.source_param(1, "weight", s_attn) == 1.0
    assert r.source_param(1, "weight", s_mlp) == pytest.approx(0.1)
    assert r.source_param(1, "density", s_mlp) == 1.0  # method default
    assert r.shared_param("lambda", s_mlp) == 0.9
    assert r.shared_param("normalize", s_mlp) is True  # TIES default, as in mergekit


def test_slices_localise_gradients_and_take_precedence():
    r = Recipe.from_dict(_ties(slices=[
        {"layers": [0, 2], "parameters": {"lambda": 0.5}},
        {"layers": [2, 5], "source_parameters": [{"density": [0.0, 1.0]}]},
    ]))
    assert r.shared_param("lambda", site("layers.1.mlp.w", "mlp", 1)) == 0.5
    assert r.shared_param("lambda", site("layers.3.mlp.w", "mlp", 3)) == 0.9
    # second slice spans layers 2..4: layer 3 is its middle
    assert r.source_param(0, "density", site("layers.3.mlp.w", "mlp", 3)) == pytest.approx(0.5)
    # first slice falls back to the source's own gradient over the whole model
    assert r.source_param(0, "density", site("layers.0.mlp.w", "mlp", 0)) == pytest.approx(0.2)
    with pytest.raises(RecipeError, match="layer 7"):
        r.source_param(0, "density", site("layers.7.mlp.w", "mlp", 7, 8))
