"""One output tensor from its inputs: resolve the recipe's parameters at this tensor and call
the method. Shared by the streaming (to disk) and in-place (to a live model) materialisers."""

from __future__ import annotations

import hashlib

import torch

from evomerge.merge import methods
from evomerge.merge.selection_cache import SelectionCache
from evomerge.recipe import Recipe, TensorSite


def dare_generator(recipe: Recipe, tensor_name: str, source_index: int,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (recipe seed, tensor, source): the same recipe gives the same
    weights whatever order or thread the tensors are merged in."""
    key = f"{recipe.seed}:{tensor_name}:{source_index}".encode()
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def merge_tensor(recipe: Recipe, site: TensorSite, base: torch.Tensor | None,
                 sources: list[torch.Tensor], out_dtype: torch.dtype = torch.float32,
                 cache: SelectionCache | None = None) -> torch.Tensor:
    """Merge one tensor's inputs (any float dtype) in float32; returns `out_dtype`.

    `cache` (in-place candidates only) supplies selections computed once per source; the
    result is bit-identical with or without it. A recipe with a 16-bit `compute_dtype` is
    merged as mergekit merges at that precision instead (see mergekit_precision)."""
    if recipe.compute_dtype not in (None, "float32"):
        from evomerge.merge.mergekit_precision import merge_tensor_like_mergekit

        return merge_tensor_like_mergekit(recipe, site, base, sources, out_dtype)
    m = recipe.method
    k = range(len(sources))
    if m == "slerp":
        a, b = (base, sources[0]) if base is not None else (sources[0], sources[1])
        return methods.slerp(a, b, float(recipe.shared_param("t", site)), out_dtype=out_dtype)
    weights = [recipe.source_param(i, "weight", site) for i in k]
    if m == "linear":
        return methods.linear(sources, weights, bool(recipe.shared_param("normalize", site)),
                              out_dtype=out_dtype)
    assert base is not None  # the recipe validator guarantees a base for these methods
    lam = float(recipe.shared_param("lambda", site))
    normalize = bool(recipe.shared_param("normalize", site))
    if m == "task_arithmetic":
        return methods.task_arithmetic(base, sources, weights, lam, normalize,
                                       out_dtype=out_dtype)
    densities = [recipe.source_param(i, "density", site) for i in k]

    def ranks() -> list[torch.Tensor | None] | None:
        if cache is None:
            return None
        return [cache.ranks(site.name, i, base, sources[i]) if densities[i] < 1 else None
                for i in k]

    if m == "ties":
        return methods.ties(base, sources, weights, densities, lam, normalize,
                            ranks=ranks(), out_dtype=out_dtype)
    if m in ("dare_linear", "dare_ties"):
        gens = [dare_generator(recipe, site.name, i, base.device) for i in k]
        draws = None if cache is None else [
            cache.uniforms(site.name, i, recipe.seed, base.numel(),
                           lambda i=i: dare_generator(recipe, site.name, i, base.device),
                           base.device) if 0 < densities[i] < 1 else None for i in k]
        fn = methods.dare_ties if m == "dare_ties" else methods.dare_linear
        return fn(base, sources, weights, densities, gens, lam, normalize, uniforms=draws,
                  out_dtype=out_dtype)
    if m in ("breadcrumbs", "breadcrumbs_ties"):
        gammas = [recipe.source_param(i, "gamma", site) for i in k]
        return methods.breadcrumbs(base, sources, weights, densities, gammas, lam, normalize,
                                   sign_consensus=m == "breadcrumbs_ties",
                                   ranks=ranks(), out_dtype=out_dtype)
    raise ValueError(f"method: unknown merge method {m!r}")
