"""Tensor facts every materialiser shares: the recipe's dtype names, element counts and a
cheap finiteness check."""

from __future__ import annotations

import math

import torch

# a recipe's `dtype` (and a candidate's) → the torch dtype it names, and back
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}


def numel(shape: tuple[int, ...]) -> int:
    """Entries of a tensor of this shape, without building one (shapes come from headers)."""
    n = 1
    for d in shape:
        n *= d
    return n


def all_finite(t: torch.Tensor) -> bool:
    """Cheap finiteness: for 16-bit floats, no entry has an all-ones exponent (bit test on
    int16, several times faster than a float32 reduction); otherwise a finite sum proves
    every entry finite and only an overflowing or NaN sum pays for the exact check."""
    if t.dtype in (torch.bfloat16, torch.float16):
        exp = 0x7F80 if t.dtype == torch.bfloat16 else 0x7C00
        return not bool(((t.view(torch.int16) & exp) == exp).any())
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())
