"""slerp: spherical interpolation of exactly two models, t = 0 giving the first (the base
when there is one). mergekit's `slerp` requires a `base_model`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evomerge.merge_methods.params import T
from evomerge.merge_methods.registry import MergeInputs, MergeMethod, register

if TYPE_CHECKING:
    import torch


def _two_models(sources: int, has_base: bool) -> str | None:
    n = sources + (1 if has_base else 0)
    if n != 2:
        return (f"sources: slerp interpolates exactly two models (base + one source, or two "
                f"sources); got {n}")
    return None


def _ends(x: MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
    return (x.base, x.sources[0]) if x.base is not None else (x.sources[0], x.sources[1])


def merge(x: MergeInputs) -> torch.Tensor:
    """float32 from float64 norms and dot product (evomerge.kernels.float32.slerp)."""
    from evomerge.kernels import (
        float32 as methods,  # torch: loaded by the first merge, not by validation
    )

    a, b = _ends(x)
    return methods.slerp(a, b, float(x.shared("t")), out_dtype=x.out_dtype)


def merge_16bit(x: MergeInputs) -> torch.Tensor:
    """mergekit's: float32 from the rounded inputs, norms summed over its chunks."""
    from evomerge.kernels import mergekit_16bit  # torch, as above

    a, b = _ends(x)
    return mergekit_16bit.slerp(float(x.shared("t")), a, b)


SLERP = register(MergeMethod(
    name="slerp", mergekit_name="slerp",
    per_source=(), shared=(T,), needs_base=False, check_models=_two_models,
    merge=merge, merge_16bit=merge_16bit,
    mergekit_requires_base=True, mergekit_16bit_inputs_only=True,
))
