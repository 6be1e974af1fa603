"""One output tensor from its inputs: resolve the recipe's parameters at this tensor and call
the method's tensor function, as the method registry declares it (docs/design.md §3). Shared by
the streaming (to disk) and in-place (to a live model) materialisers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from evomerge.merge.selection_cache import SelectionCache
from evomerge.merge_methods import get_method
from evomerge.models.architecture import TensorSite
from evomerge.recipe import Recipe

# a recipe's compute_dtype: mergekit's arithmetic at that precision
_COMPUTE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def dare_generator(recipe: Recipe, tensor_name: str, source_index: int,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (recipe seed, tensor, source): the same recipe gives the same
    weights whatever order or thread the tensors are merged in."""
    key = f"{recipe.seed}:{tensor_name}:{source_index}".encode()
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@dataclass
class TensorInputs:
    """The registry's `MergeInputs` for one tensor of one recipe: parameters are resolved at
    `site` on demand, and selections come from `cache` when one is given."""

    recipe: Recipe
    site: TensorSite
    base: torch.Tensor | None
    sources: Sequence[torch.Tensor]
    out_dtype: torch.dtype = torch.float32
    cache: SelectionCache | None = None

    def per_source(self, name: str) -> list[float]:
        """A per-source parameter at this tensor, for each source."""
        return [self.recipe.source_param(i, name, self.site) for i in range(len(self.sources))]

    def shared(self, name: str) -> Any:
        """A shared parameter at this tensor."""
        return self.recipe.shared_param(name, self.site)

    def magnitude_ranks(self, densities: Sequence[float]) -> list[torch.Tensor | None] | None:
        """Cached magnitude ranks of the sources whose density trims (None: no cache)."""
        if self.cache is None:
            return None
        assert self.base is not None
        return [self.cache.ranks(self.site.name, i, self.base, s) if d < 1 else None
                for i, (s, d) in enumerate(zip(self.sources, densities, strict=True))]

    def dare_generators(self) -> list[torch.Generator]:
        """Each source's DARE generator at this tensor (`dare_generator`)."""
        device = self._device()
        return [dare_generator(self.recipe, self.site.name, i, device)
                for i in range(len(self.sources))]

    def dare_uniforms(self, densities: Sequence[float]) -> list[torch.Tensor | None] | None:
        """Cached DARE draws of the sources that drop entries (None: no cache)."""
        if self.cache is None:
            return None
        assert self.base is not None
        device, n = self._device(), self.base.numel()
        return [self.cache.uniforms(
            self.site.name, i, self.recipe.seed, n,
            lambda i=i: dare_generator(self.recipe, self.site.name, i, device), device)
            if 0 < d < 1 else None for i, d in enumerate(densities)]

    def _device(self) -> torch.device:
        return (self.base if self.base is not None else self.sources[0]).device


def merge_tensor(recipe: Recipe, site: TensorSite, base: torch.Tensor | None,
                 sources: list[torch.Tensor], out_dtype: torch.dtype = torch.float32,
                 cache: SelectionCache | None = None) -> torch.Tensor:
    """Merge one tensor's inputs (any float dtype) in float32; returns `out_dtype`.

    `cache` (in-place candidates only) supplies selections computed once per source; the
    result is bit-identical with or without it. A recipe with a 16-bit `compute_dtype` is
    merged as mergekit merges at that precision instead (the method's `merge_16bit`, on
    inputs rounded to that dtype; see evomerge.kernels.mergekit_16bit)."""
    spec = get_method(recipe.method)
    if recipe.compute_dtype not in (None, "float32"):
        if spec.merge_16bit is None:  # the recipe validator refuses this; keep it plain
            raise ValueError(f"compute_dtype: {spec.precision_refusal}")
        compute = _COMPUTE_DTYPES[recipe.compute_dtype]
        rounded = TensorInputs(recipe, site, base.to(compute) if base is not None else None,
                               [s.to(compute) for s in sources], compute)
        return spec.merge_16bit(rounded).to(out_dtype)
    return spec.merge(TensorInputs(recipe, site, base, sources, out_dtype, cache))
