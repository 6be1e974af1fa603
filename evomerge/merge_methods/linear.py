"""linear: Σ w_k θ_k, divided by Σ w_k when normalising (mergekit's `linear`).

mergekit has no base for it: a config's `base_model` is one more input, at the global weight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evomerge.merge_methods.params import NORMALIZE, WEIGHT
from evomerge.merge_methods.registry import MergeInputs, MergeMethod, register

if TYPE_CHECKING:
    import torch


def merge(x: MergeInputs) -> torch.Tensor:
    """float32, chunk by chunk (evomerge.kernels.float32.linear)."""
    from evomerge.kernels import (
        float32 as methods,  # torch: loaded by the first merge, not by validation
    )

    return methods.linear(list(x.sources), x.per_source("weight"), bool(x.shared("normalize")),
                          out_dtype=x.out_dtype)


def merge_16bit(x: MergeInputs) -> torch.Tensor:
    """mergekit's: float32 accumulation of the rounded inputs, rounded back."""
    from evomerge.kernels import mergekit_16bit  # torch, as above

    return mergekit_16bit.linear(x.sources, x.per_source("weight"),
                                     bool(x.shared("normalize")))


LINEAR = register(MergeMethod(
    name="linear", mergekit_name="linear",
    per_source=(WEIGHT,), shared=(NORMALIZE.with_default(True),), needs_base=False,
    merge=merge, merge_16bit=merge_16bit,
    mergekit_base_is_input=True, mergekit_16bit_inputs_only=True,
))
