"""The merge-method registry: what each method declares, that every layer reads it, and that
a new method is one new module (docs/design.md §3)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import evomerge
from evomerge.kernels import float32 as M
from evomerge.kernels import mergekit_16bit as MP
from evomerge.merge.selection_cache import SelectionCache
from evomerge.merge.tensor_merge import dare_generator, merge_tensor
from evomerge.merge_methods import METHODS, PARAM_RANGES, SEARCH_RANGES, get_method, registered
from evomerge.merge_methods.params import WEIGHT
from evomerge.merge_methods.registry import MergeMethod, Param, register
from evomerge.models.architecture import TensorSite
from evomerge.recipe import Recipe


def test_the_built_in_methods_and_their_parameters():
    """Pinned: these defaults decide the weights of every recipe that leaves a value out."""
    assert METHODS == ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties",
                       "breadcrumbs", "breadcrumbs_ties", "slerp")
    table = {m.name: (m.per_source_defaults, m.shared_defaults, m.needs_base)
             for m in registered()}
    gta = {"lambda": 1.0, "normalize": False}
    assert table == {
        "linear": ({"weight": 1.0}, {"normalize": True}, False),
        "task_arithmetic": ({"weight": 1.0}, gta, True),
        "ties": ({"weight": 1.0, "density": 1.0}, {"lambda": 1.0, "normalize": True}, True),
        "dare_linear": ({"weight": 1.0, "density": 1.0}, gta, True),
        "dare_ties": ({"weight": 1.0, "density": 1.0}, gta, True),
        "breadcrumbs": ({"weight": 1.0, "density": 1.0, "gamma": 0.01}, gta, True),
        "breadcrumbs_ties": ({"weight": 1.0, "density": 1.0, "gamma": 0.01}, gta, True),
        "slerp": ({}, {"t": 0.5}, False),
    }
    assert all(m.mergekit_name == m.name for m in registered())
    assert [m.name for m in registered() if m.precision_refusal] == ["dare_linear", "dare_ties"]
    assert PARAM_RANGES == {"density": (0.0, 1.0), "gamma": (0.0, 1.0), "t": (0.0, 1.0)}
    assert SEARCH_RANGES == {"weight": (0.0, 1.0), "density": (0.1, 1.0), "gamma": (0.0, 0.1),
                             "t": (0.0, 1.0), "lambda": (0.0, 2.0)}


def test_registration_refuses_duplicates_and_redeclared_parameters():
    ties = get_method("ties")
    with pytest.raises(ValueError, match="registered twice"):
        register(ties)
    with pytest.raises(ValueError, match="parameter 'weight' differs from its declaration"):
        register(MergeMethod(name="x", mergekit_name=None, per_source=(Param("weight", 1.0),),
                             shared=(), needs_base=False, merge=ties.merge))
    with pytest.raises(ValueError, match="mergekit name 'ties' is taken"):
        register(MergeMethod(name="x", mergekit_name="ties", per_source=(WEIGHT,), shared=(),
                             needs_base=False, merge=ties.merge))
    with pytest.raises(ValueError, match="method: unknown merge method 'x'"):
        get_method("x")


SITE = TensorSite("model.layers.1.mlp.up_proj.weight", "mlp", 1, 3)


def _inputs(n: int = 5000):
    g = torch.Generator().manual_seed(4)
    base = torch.randn(n, generator=g)
    return base, [base + 0.1 * torch.randn(n, generator=g) for _ in range(2)]


def _recipe(method: str, **params) -> Recipe:
    sources = [{"model": m, "parameters": {k: v[i] for k, v in params.items()}}
               for i, m in enumerate("xy")]
    base = None if method == "linear" else "b"
    if method == "slerp":
        sources = sources[:1]
    return Recipe.from_dict({"method": method, "base": base, "sources": sources, "seed": 3,
                             "parameters": {"lambda": 0.8} if get_method(method).needs_base
                             else {}})


@pytest.mark.parametrize("method", METHODS)
def test_the_registered_functions_are_the_kernels_bit_for_bit(method):
    """What merge_tensor runs for each method (from the registry) is the methods.py function
    of that name, with and without the selection cache."""
    base, srcs = _inputs()
    w, d, gm = [0.7, 0.4], [0.3, 0.6], [0.05, 0.02]
    spec = get_method(method)
    recipe = _recipe(method, **{k: v for k, v in {"weight": w, "density": d, "gamma": gm}.items()
                                if k in spec.per_source_defaults})
    gens = [dare_generator(recipe, SITE.name, i) for i in range(2)]
    want = {
        "linear": lambda: M.linear(srcs, w),
        "task_arithmetic": lambda: M.task_arithmetic(base, srcs, w, 0.8),
        "ties": lambda: M.ties(base, srcs, w, d, 0.8),
        "dare_linear": lambda: M.dare_linear(base, srcs, w, d, gens, 0.8),
        "dare_ties": lambda: M.dare_ties(base, srcs, w, d, gens, 0.8),
        "breadcrumbs": lambda: M.breadcrumbs(base, srcs, w, d, gm, 0.8),
        "breadcrumbs_ties": lambda: M.breadcrumbs(base, srcs, w, d, gm, 0.8,
                                                  sign_consensus=True),
        "slerp": lambda: M.slerp(base, srcs[0], 0.5),
    }[method]()
    b = base if recipe.base else None
    ins = srcs[:len(recipe.sources)]
    assert torch.equal(merge_tensor(recipe, SITE, b, ins), want)
    cache = SelectionCache(1 << 30)
    for _ in range(2):  # the first call fills the cache, the second reads it
        assert torch.equal(merge_tensor(recipe, SITE, b, ins, cache=cache), want)


@pytest.mark.parametrize("method", [m for m in METHODS if not get_method(m).precision_refusal])
def test_the_16_bit_path_is_mergekits_sequence_on_rounded_inputs(method):
    base, srcs = _inputs()
    r16 = [s.to(torch.float16) for s in srcs]
    b16 = base.to(torch.float16)
    w, d, gm = [0.7, 0.4], [0.3, 0.6], [0.05, 0.02]
    trims = {"task_arithmetic": [None, None],
             "ties": [lambda x, k=k: MP.trim_magnitude(x, k) for k in d],
             "breadcrumbs": [lambda x, k=k, g=g: MP.trim_outliers(x, k, g)
                             for k, g in zip(d, gm, strict=True)]}
    trims["breadcrumbs_ties"] = trims["breadcrumbs"]
    want = {
        "linear": lambda: MP.linear(r16, w, True),
        "slerp": lambda: MP.slerp(0.5, b16, r16[0]),
    }.get(method) or (lambda: MP.task_arithmetic_family(
        b16, r16, w, trims[method], consensus=method.endswith("ties"), lam=0.8,
        normalize=method == "ties"))
    spec = get_method(method)
    recipe = _recipe(method, **{k: v for k, v in {"weight": w, "density": d, "gamma": gm}.items()
                                if k in spec.per_source_defaults})
    recipe = recipe.model_copy(update={"compute_dtype": "float16"})
    got = merge_tensor(recipe, SITE, base if recipe.base else None, srcs[:len(recipe.sources)])
    assert torch.equal(got, want().to(torch.float32))


def test_the_registry_and_the_recipe_layer_load_no_torch():
    code = ("import sys, evomerge.merge_methods, evomerge.recipe, evomerge.recipe_file, "
            "evomerge.space.parameter; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# A method evomerge does not have, written as a user would add one: a single module in
# evomerge/merge_methods/, with a parameter of its own.
NEW_METHOD = '''
"""scaled_mean: scale · Σ w_k θ_k / Σ w_k (a toy method for tests/test_merge_methods.py)."""

from __future__ import annotations

from evomerge.merge_methods.params import WEIGHT
from evomerge.merge_methods.registry import MergeInputs, MergeMethod, Param, declare_param
from evomerge.merge_methods.registry import register

SCALE = declare_param(Param("scale", 1.0, valid=(0.0, 10.0), search=(0.5, 1.5)))


def merge(x: MergeInputs):
    from evomerge.kernels import float32 as methods

    out = methods.linear(list(x.sources), x.per_source("weight"), True)
    return (out * float(x.shared("scale"))).to(x.out_dtype)


register(MergeMethod(name="scaled_mean", mergekit_name=None, per_source=(WEIGHT,),
                     shared=(SCALE,), needs_base=False, merge=merge))
'''

CHECKS = '''
import pytest, torch
from evomerge.merge.tensor_merge import merge_tensor
from evomerge.merge_methods import METHODS
from evomerge.mergekit_yaml import recipe_from_mergekit, recipe_to_mergekit
from evomerge.models.architecture import tensor_site
from evomerge.recipe import Recipe, RecipeError
from evomerge.space.parameter import ParameterSpace

assert METHODS[-1] == "scaled_mean" and METHODS[:-1] == {old!r}
data = {{"method": "scaled_mean", "sources": [{{"model": "x", "parameters": {{"weight": 3}}}},
                                            {{"model": "y"}}], "parameters": {{"scale": 2}}}}
recipe = Recipe.from_dict(data)
a, b = torch.ones(4), torch.full((4,), 5.0)
site = tensor_site("model.layers.0.mlp.up_proj.weight", 2)
assert merge_tensor(recipe, site, None, [a, b]).tolist() == [4.0] * 4
for bad, needle in [({{"parameters": {{"scale": 11}}}}, "parameters: scale: 11 is outside"),
                    ({{"parameters": {{"lambda": 1}}}}, "parameters.lambda: not a parameter"),
                    ({{"compute_dtype": "float16"}}, "no 16-bit path for scaled_mean")]:
    with pytest.raises(RecipeError, match=needle):
        Recipe.from_dict({{**data, **bad}})
with pytest.raises(RecipeError, match="mergekit has no scaled_mean merge"):
    recipe_to_mergekit(recipe)
with pytest.raises(RecipeError, match="'scaled_mean' is not supported"):
    recipe_from_mergekit({{"merge_method": "scaled_mean", "models": [{{"model": "x"}}]}})
space = ParameterSpace(["x", "y"], base="b", methods=["ties", "scaled_mean"])
assert space.describe() == ["src0.weight", "src0.density", "src1.weight", "src1.density",
                            "scale", "method"]
assert space.decode(space.initial() * 0 + 0.75).parameters == {{"scale": 1.25}}
print("ok")
'''


def test_a_new_method_is_one_new_module(tmp_path):
    """Recipes, the tensor merge, the parameter space and mergekit import/export all take up
    a method whose only trace is its own module (in a copy of the package)."""
    shutil.copytree(Path(evomerge.__file__).parent, tmp_path / "evomerge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "evomerge" / "merge_methods" / "scaled_mean.py").write_text(
        textwrap.dedent(NEW_METHOD))
    code = CHECKS.format(old=METHODS)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
