"""Same YAML, same weights: our merge against mergekit 0.1.5 on float32 sources.

Runs when the optional `mergekit` extra is installed. DARE is left out (random by design, and
mergekit rescales survivors by L1 norm rather than 1/density); everything else must agree
within float rounding.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from evomerge.cli import app

from .conftest import write_yaml
from .test_merge_cli import load_dir

pytest.importorskip("mergekit")
pytestmark = pytest.mark.mergekit


def mergekit_merge(config_path, out) -> None:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    cfg = MergeConfiguration.model_validate(yaml.safe_load(config_path.read_text()))
    run_merge(cfg, str(out), MergeOptions(copy_tokenizer=False, write_model_card=False,
                                          quiet=True, random_seed=0))


def configs(zoo) -> dict[str, dict]:
    base, a, b, c = (str(zoo[k]) for k in ("base", "a", "b", "c"))
    grad = {"weight": [0.2, 0.9, 0.4], "density": [0.3, 0.8]}
    filt = {"weight": [{"filter": "self_attn", "value": 0.8},
                       {"filter": "mlp", "value": [0.1, 0.6]}, {"value": 0.5}],
            "density": 0.5}
    models = [{"model": base}, {"model": a, "parameters": grad}, {"model": b, "parameters": filt},
              {"model": c, "parameters": {"weight": 0.3, "density": 0.7}}]

    def mk(method, ms=models, **params):
        cfg = {"merge_method": method, "base_model": base, "dtype": "float32", "models": ms}
        if params:
            cfg["parameters"] = params
        return cfg

    slices = {
        "merge_method": "ties", "base_model": base, "dtype": "float32",
        "parameters": {"lambda": 0.9},
        "slices": [
            {"sources": [{"model": a, "layer_range": [0, 1], "parameters": {"weight": 0.6,
                                                                            "density": 0.4}},
                         {"model": b, "layer_range": [0, 1], "parameters": {"weight": 0.3,
                                                                            "density": 0.9}},
                         {"model": base, "layer_range": [0, 1]}]},
            {"sources": [{"model": a, "layer_range": [1, 3], "parameters": {
                             "weight": [0.1, 0.9], "density": 0.5}},
                         {"model": b, "layer_range": [1, 3], "parameters": {"weight": 0.5}},
                         {"model": base, "layer_range": [1, 3]}],
             "parameters": {"density": 0.25}},
        ],
    }
    return {
        "ties": mk("ties"),
        "ties_unnormalised_lambda": mk("ties", normalize=False, **{"lambda": 0.7}),
        "task_arithmetic": mk("task_arithmetic", **{"lambda": 1.3}),
        "breadcrumbs": mk("breadcrumbs", gamma=0.05),
        "breadcrumbs_ties": mk("breadcrumbs_ties", gamma=0.02),
        "linear": {"merge_method": "linear", "dtype": "float32",
                   "models": [{"model": a, "parameters": {"weight": [1.0, 2.0]}},
                              {"model": b, "parameters": {"weight": 0.5}}]},
        "slerp": {"merge_method": "slerp", "base_model": base, "dtype": "float32",
                  "parameters": {"t": [{"filter": "self_attn", "value": [0.1, 0.7]},
                                       {"value": 0.3}]},
                  "models": [{"model": base}, {"model": a}]},
        "ties_slices": slices,
    }


@pytest.mark.parametrize("name", list(configs({k: k for k in ("base", "a", "b", "c")})))
def test_same_weights_as_mergekit(zoo, tmp_path, name):
    cfg = write_yaml(tmp_path / f"{name}.yaml", configs(zoo)[name])
    mergekit_merge(cfg, tmp_path / "mk")
    result = CliRunner().invoke(app, ["merge", str(cfg), str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    theirs, ours = load_dir(tmp_path / "mk"), load_dir(tmp_path / "ours")
    assert set(theirs) == set(ours)
    base = load_dir(zoo["base"])
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype == torch.float32
        assert torch.allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6), (
            k, float((ours[k] - theirs[k]).abs().max()))
        if name != "linear" and not k.endswith("norm.weight"):
            assert not torch.equal(ours[k], base[k]), k  # the merge did something
