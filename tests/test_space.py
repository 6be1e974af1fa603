"""Genome ↔ recipe codecs: hand-built genomes decode to the expected recipes."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.models.architecture import TensorSite
from evomerge.recipe import Recipe, RouteHop
from evomerge.space.base import Space
from evomerge.space.dataflow import DataFlowSpace
from evomerge.space.flat import FlatSpace
from evomerge.space.parameter import ParameterSpace


def _roundtrip(r: Recipe) -> None:
    again = Recipe.from_yaml(r.to_yaml())
    assert again == r
    assert again.digest() == r.digest()


# --- parameter space ---------------------------------------------------------------------------
def test_ps_scalar_genes_order_bounds_and_decode():
    ps = ParameterSpace(["a", "b"], base="base", method="ties")
    assert ps.describe() == ["src0.weight", "src0.density", "src1.weight", "src1.density"]
    assert ps.dim == 4
    np.testing.assert_array_equal(ps.lower, np.zeros(4))
    np.testing.assert_array_equal(ps.upper, np.ones(4))
    np.testing.assert_array_equal(ps.initial(), np.full(4, 0.5))
    r = ps.decode(np.array([0.25, 0.0, 1.0, 0.5]))
    assert r.method == "ties" and r.base == "base"
    assert [s.model for s in r.sources] == ["a", "b"]
    assert r.sources[0].parameters == {"weight": 0.25, "density": pytest.approx(0.1)}
    assert r.sources[1].parameters == {"weight": 1.0, "density": pytest.approx(0.55)}
    assert r.parameters == {}
    _roundtrip(r)


def test_ps_out_of_box_genes_are_clipped_and_bad_length_refused():
    ps = ParameterSpace(["a"], base="base", method="task_arithmetic")
    assert ps.decode(np.array([1.7])).sources[0].parameters == {"weight": 1.0}
    assert ps.decode(np.array([-0.2])).sources[0].parameters == {"weight": 0.0}
    with pytest.raises(ValueError, match="expected 1 genes"):
        ps.decode(np.zeros(2))


def test_ps_groups_and_kinds_layout():
    ps = ParameterSpace(
        ["a", "b"], base="base", method="dare_ties", groups=2, kinds=["attention", "default"],
        weight_range=(0.0, 2.0), density_range=(0.0, 1.0),
    )
    names = ps.describe()
    assert names[:8] == [
        "src0.weight.attention.g0", "src0.weight.attention.g1",
        "src0.weight.default.g0", "src0.weight.default.g1",
        "src0.density.attention.g0", "src0.density.attention.g1",
        "src0.density.default.g0", "src0.density.default.g1",
    ]
    assert ps.dim == 16 and names[8] == "src1.weight.attention.g0"
    x = np.arange(16) / 16
    r = ps.decode(x)
    w0 = r.sources[0].parameters["weight"]
    assert w0 == {"attention": {"groups": [0.0, 0.125]}, "default": {"groups": [0.25, 0.375]}}
    assert r.sources[1].parameters["density"] == {
        "attention": {"groups": [12 / 16, 13 / 16]}, "default": {"groups": [14 / 16, 15 / 16]}
    }
    # the recipe resolves per tensor as intended: layer 3 of 4 is in group 1
    site = TensorSite("model.layers.3.mlp.up_proj.weight", "mlp", 3, 4)
    assert r.source_param(0, "weight", site) == 0.375
    site = TensorSite("model.layers.0.self_attn.q_proj.weight", "attention", 0, 4)
    assert r.source_param(1, "density", site) == 12 / 16
    _roundtrip(r)


def test_ps_groups_only_uses_groups_form():
    ps = ParameterSpace(["a"], method="linear", groups=3)
    assert ps.describe() == ["src0.weight.g0", "src0.weight.g1", "src0.weight.g2"]
    r = ps.decode(np.array([0.0, 0.5, 1.0]))
    assert r.sources[0].parameters == {"weight": {"groups": [0.0, 0.5, 1.0]}}


def test_ps_kinds_must_cover_every_tensor():
    with pytest.raises(ValueError, match="add 'default'"):
        ParameterSpace(["a"], method="linear", kinds=["attention", "mlp"])
    with pytest.raises(ValueError, match="unknown"):
        ParameterSpace(["a"], method="linear", kinds=["attn", "default"])
    all_kinds = ["attention", "mlp", "norm", "embed", "head", "other"]
    assert ParameterSpace(["a"], method="linear", kinds=all_kinds).dim == 6


def test_ps_method_parameters_breadcrumbs_slerp_lambda():
    bc = ParameterSpace(["a"], base="base", method="breadcrumbs", search_lambda=True)
    assert bc.describe() == ["src0.weight", "src0.density", "src0.gamma", "lambda"]
    r = bc.decode(np.array([0.5, 0.5, 0.5, 0.5]))
    assert r.sources[0].parameters["gamma"] == pytest.approx(0.05)
    assert r.parameters == {"lambda": 1.0}  # the midpoint is the untuned default
    _roundtrip(r)

    sl = ParameterSpace(["a", "b"], method="slerp", groups=2)
    assert sl.describe() == ["t.g0", "t.g1"]
    r = sl.decode(np.array([0.2, 0.8]))
    assert r.parameters == {"t": {"groups": [0.2, 0.8]}}
    assert all(s.parameters == {} for s in r.sources)
    _roundtrip(r)


def test_ps_invalid_combinations_fail_at_construction():
    with pytest.raises(ValueError, match="base"):
        ParameterSpace(["a", "b"], method="ties")
    with pytest.raises(ValueError, match="slerp"):
        ParameterSpace(["a", "b", "c"], base="base", methods=["ties", "slerp"])
    with pytest.raises(ValueError, match="exactly one"):
        ParameterSpace(["a"], method="linear", methods=["linear"])
    with pytest.raises(ValueError, match="unknown"):
        ParameterSpace(["a"], method="bogus")


def test_ps_method_choice():
    ps = ParameterSpace(["a"], base="base", methods=["task_arithmetic", "ties", "breadcrumbs"])
    assert ps.describe() == ["src0.weight", "src0.density", "src0.gamma", "method"]
    genes = [0.5, 0.5, 0.5]
    picks = {u: ps.decode(np.array([*genes, u])).method for u in (0.0, 0.33, 0.34, 0.66, 0.67, 1.0)}
    assert picks == {
        0.0: "task_arithmetic", 0.33: "task_arithmetic", 0.34: "ties", 0.66: "ties",
        0.67: "breadcrumbs", 1.0: "breadcrumbs",
    }
    # only the chosen method's parameters appear
    assert ps.decode(np.array([*genes, 0.0])).sources[0].parameters == {"weight": 0.5}
    assert set(ps.decode(np.array([*genes, 0.5])).sources[0].parameters) == {"weight", "density"}
    r = ps.decode(np.array([*genes, 0.9]))
    assert set(r.sources[0].parameters) == {"weight", "density", "gamma"}
    _roundtrip(r)
    assert ps.method_of(ps.initial()) == "ties"


def test_ps_passes_dtype_and_seed():
    ps = ParameterSpace(["a"], base="b", method="dare_linear", dtype="bfloat16", seed=7)
    r = ps.decode(ps.initial())
    assert r.dtype == "bfloat16" and r.seed == 7


# --- data-flow space ---------------------------------------------------------------------------
def _hops(route: list[RouteHop]) -> list[tuple[int, int, float]]:
    return [(h.source, h.layer, h.scale) for h in route]


def test_dfs_layout_and_bounds():
    dfs = DataFlowSpace([("A", 3), ("B", 2)], repeats=2, scale_mode="slot")
    assert dfs.M == 5 and dfs.T == 10 and dfs.dim == 20
    names = dfs.describe()
    assert names[:6] == ["I.r0.s0.l0", "I.r0.s0.l1", "I.r0.s0.l2", "I.r0.s1.l0", "I.r0.s1.l1",
                         "I.r1.s0.l0"]
    assert names[10] == "scale.r0.s0.l0"
    np.testing.assert_array_equal(dfs.lower, [-1.0] * 10 + [0.05] * 10)
    np.testing.assert_array_equal(dfs.upper, [1.0] * 10 + [2.0] * 10)
    assert DataFlowSpace([("A", 3), ("B", 2)], repeats=2, scale_mode="none").dim == 10
    pair = DataFlowSpace([("A", 3), ("B", 2)], repeats=2, scale_mode="pair")
    assert pair.dim == 10 + 25
    assert pair.describe()[10:13] == ["W[0,0]", "W[0,1]", "W[0,2]"]


def test_dfs_initial_is_model_a():
    for mode in ("none", "slot", "pair"):
        dfs = DataFlowSpace([("A", 4), ("B", 3)], scale_mode=mode, sigma=0.1)
        x0 = dfs.initial()
        np.testing.assert_allclose(x0[:4], 0.2)
        np.testing.assert_allclose(x0[4 : dfs.T], -0.2)
        np.testing.assert_array_equal(x0[dfs.T :], 1.0)
        assert np.all(x0 >= dfs.lower) and np.all(x0 <= dfs.upper)
        assert _hops(dfs.route(x0)) == [(0, 0, 1.0), (0, 1, 1.0), (0, 2, 1.0), (0, 3, 1.0)]
        r = dfs.decode(x0)
        assert [s.model for s in r.sources] == ["A", "B"]
        _roundtrip(r)


def test_dfs_positive_rule_and_slot_order():
    dfs = DataFlowSpace([("A", 3), ("B", 2)], repeats=2, scale_mode="none")
    ind = -np.ones(10)
    # slots: 0 A0, 3 B0, 4 B1, 6 A1 (rep 1), 7 A2 (rep 1); 0.0 is off (strictly > 0)
    ind[[0, 3, 4, 6, 7]] = [0.01, 0.5, 1.0, 0.2, 0.3]
    ind[1] = 0.0
    assert _hops(dfs.route(ind)) == [
        (0, 0, 1.0), (1, 0, 1.0), (1, 1, 1.0), (0, 1, 1.0), (0, 2, 1.0)
    ]


def test_dfs_start_end_constraint():
    dfs = DataFlowSpace([("A", 3), ("B", 2)], repeats=2, scale_mode="none")
    ind = -np.ones(10)
    ind[[3, 4]] = 1.0  # only B0, B1: A0 prepended, A2 appended
    assert [(h.source, h.layer) for h in dfs.route(ind)] == [(0, 0), (1, 0), (1, 1), (0, 2)]
    assert [(h.source, h.layer) for h in dfs.route(-np.ones(10))] == [(0, 0), (0, 2)]
    ind = -np.ones(10)
    ind[[5, 7]] = 1.0  # A0 and A2 of repetition 1: already compliant
    assert [(h.source, h.layer) for h in dfs.route(ind)] == [(0, 0), (0, 2)]
    single = DataFlowSpace([("A", 1), ("B", 2)], repeats=1, scale_mode="none")
    assert [(h.source, h.layer) for h in single.route(-np.ones(3))] == [(0, 0)]


def test_dfs_slot_scales():
    dfs = DataFlowSpace([("A", 3), ("B", 2)], repeats=2, scale_mode="slot")
    ind = -np.ones(10)
    ind[[3, 6, 7]] = 1.0  # B0, A1 (rep1), A2 (rep1); A0 gets prepended
    scales = np.linspace(0.1, 1.0, 10)
    route = _hops(dfs.route(np.concatenate([ind, scales])))
    assert route == [
        (0, 0, 1.0),  # added hop: no gene, scale 1.0
        (1, 0, pytest.approx(scales[3])),
        (0, 1, pytest.approx(scales[6])),
        (0, 2, pytest.approx(scales[7])),
    ]
    # scales are clipped into their box
    big = dfs.route(np.concatenate([np.where(np.arange(10) < 3, 1.0, -1.0), np.full(10, 5.0)]))
    assert [h.scale for h in big] == [2.0, 2.0, 2.0]


def test_dfs_pair_scales():
    dfs = DataFlowSpace([("A", 3), ("B", 2)], repeats=2, scale_mode="pair")
    ind = -np.ones(10)
    ind[[3, 4, 6]] = 1.0  # B0 (global 3), B1 (global 4), A1 (global 1); A0 added, A2 added
    W = np.arange(25, dtype=float).reshape(5, 5) / 20  # W[i, j] = (5i + j) / 20
    route = _hops(dfs.route(np.concatenate([ind, W.ravel()])))
    assert route == [
        (0, 0, 1.0),  # first hop: no predecessor
        (1, 0, W[0, 3]),
        (1, 1, W[3, 4]),
        (0, 1, W[4, 1]),
        (0, 2, W[1, 2]),  # added end hop still takes its transition's W
    ]
    r = dfs.decode(np.concatenate([ind, W.ravel()]))
    assert r.method == "passthrough" and len(r.route) == 5
    _roundtrip(r)


def test_dfs_argument_checks():
    with pytest.raises(ValueError, match="scale_mode"):
        DataFlowSpace([("A", 2)], scale_mode="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2σ"):
        DataFlowSpace([("A", 2)], sigma=0.6)
    with pytest.raises(ValueError, match="expected"):
        DataFlowSpace([("A", 2)], repeats=1, scale_mode="none").route(np.zeros(3))




# --- flat --------------------------------------------------------------------------------------
def test_flat_identity_and_bounds():
    fs = FlatSpace(5)
    assert isinstance(fs, Space)
    assert fs.lower is None and fs.upper is None
    np.testing.assert_array_equal(fs.initial(), np.zeros(5))
    g = np.array([0.1, -2.0, 3.5, 0.0, 1e-3])
    out = fs.decode(g)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, g.astype(np.float32))
    out[0] = 99.0
    assert g[0] == 0.1  # a copy, not a view

    x0 = np.linspace(0, 1, 5)
    fb = FlatSpace(5, x0=x0, lower=-1.0, upper=np.full(5, 2.0))
    np.testing.assert_array_equal(fb.initial(), x0)
    np.testing.assert_array_equal(fb.lower, -np.ones(5))
    np.testing.assert_array_equal(fb.upper, np.full(5, 2.0))
    with pytest.raises(ValueError):
        FlatSpace(3, x0=np.zeros(4))
    with pytest.raises(ValueError):
        fs.decode(np.zeros(4))
