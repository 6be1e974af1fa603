"""A decoded parameter-space genome is a recipe the merge engine builds as the genes say."""

from __future__ import annotations

import numpy as np
import torch

from evomerge.kernels import float32 as M
from evomerge.merge.directory import merge_to_directory
from evomerge.space.parameter import ParameterSpace

from .test_merge_cli import load_dir


def test_ps_genome_to_merged_weights(zoo, tmp_path):
    space = ParameterSpace([str(zoo["a"]), str(zoo["b"])], base=str(zoo["base"]),
                           method="ties", groups=3, kinds=("attention", "default"))
    names = space.describe()
    x = np.random.default_rng(0).random(space.dim)
    recipe = space.decode(x)
    merge_to_directory(recipe, tmp_path / "m")
    got, base = load_dir(tmp_path / "m"), load_dir(zoo["base"])
    srcs = [load_dir(zoo["a"]), load_dir(zoo["b"])]

    def gene(name: str, lo: float, hi: float) -> float:
        return lo + x[names.index(name)] * (hi - lo)

    for tensor in ("model.layers.1.self_attn.v_proj.weight", "model.layers.2.mlp.up_proj.weight"):
        layer = int(tensor.split(".")[2])
        kind = "attention" if "self_attn" in tensor else "default"
        w = [gene(f"src{k}.weight.{kind}.g{layer}", 0, 1) for k in range(2)]
        d = [gene(f"src{k}.density.{kind}.g{layer}", 0.1, 1) for k in range(2)]
        want = M.ties(base[tensor], [s[tensor] for s in srcs], w, d)
        assert torch.allclose(got[tensor], want, atol=1e-6), tensor
