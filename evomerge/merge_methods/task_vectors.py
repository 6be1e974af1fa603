"""The task-arithmetic family: θ₀ + λ · combine_k(w_k · keep_k(θ_k − θ₀)).

One generic merge (mergekit's generalized task arithmetic) behind six methods, which differ
in two choices: which entries of each task vector τ_k survive (`_Trim`: all, the top-k by
magnitude, the top-k less the largest outliers, or DARE's random draw rescaled by 1/density),
and whether only entries agreeing with the elected sign count (`consensus`, as in TIES).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

from evomerge.merge_methods.params import DENSITY, GAMMA, LAMBDA, NORMALIZE, WEIGHT
from evomerge.merge_methods.registry import MergeInputs, MergeMethod, OptionCheck, register

if TYPE_CHECKING:
    import torch


class _Trim(Enum):
    """Which entries of a task vector survive."""

    NONE = "none"
    MAGNITUDE = "magnitude"  # TIES: the top-d fraction by |τ|
    OUTLIERS = "outliers"  # breadcrumbs: that band, less the largest gamma fraction
    DARE = "dare"  # each with probability d, survivors rescaled by 1/d


def _float32(trim: _Trim, consensus: bool) -> Callable[[MergeInputs], torch.Tensor]:
    def merge(x: MergeInputs) -> torch.Tensor:
        from evomerge.kernels import (
            float32 as methods,  # torch: loaded by the first merge, not validation
        )

        base = x.base
        assert base is not None  # the recipe validator guarantees a base for these methods
        weights = x.per_source("weight")
        lam = float(x.shared("lambda"))
        normalize = bool(x.shared("normalize"))
        rules: list[Any] | None = None
        if trim is not _Trim.NONE:
            n = base.numel()
            densities = x.per_source("density")
            if trim is _Trim.DARE:
                draws = x.dare_uniforms(densities) or [None] * len(densities)
                rules = [methods.dare_rule(d, g, u) for d, g, u
                         in zip(densities, x.dare_generators(), draws, strict=True)]
            else:
                ranks = x.magnitude_ranks(densities) or [None] * len(densities)
                if trim is _Trim.MAGNITUDE:
                    rules = [methods.magnitude_rule(d, n, r)
                             for d, r in zip(densities, ranks, strict=True)]
                else:
                    rules = [methods.outlier_rule(d, g, n, r) for d, g, r
                             in zip(densities, x.per_source("gamma"), ranks, strict=True)]
        return methods.task_vector_merge(base, list(x.sources), weights, rules, consensus, lam,
                                         normalize, out_dtype=x.out_dtype)

    return merge


def _16bit(trim: _Trim, consensus: bool) -> Callable[[MergeInputs], torch.Tensor]:
    def merge_16bit(x: MergeInputs) -> torch.Tensor:
        from evomerge.kernels import mergekit_16bit as mp  # torch, as above

        base = x.base
        assert base is not None
        trims: list[Callable[[torch.Tensor], torch.Tensor] | None] = [None] * len(x.sources)
        if trim is _Trim.MAGNITUDE:
            trims = [lambda d, density=density: mp.trim_magnitude(d, density)
                     for density in x.per_source("density")]
        elif trim is _Trim.OUTLIERS:
            trims = [lambda d, density=density, gamma=gamma: mp.trim_outliers(d, density, gamma)
                     for density, gamma in zip(x.per_source("density"), x.per_source("gamma"),
                                               strict=True)]
        return mp.task_arithmetic_family(base, x.sources, x.per_source("weight"), trims,
                                         consensus=consensus, lam=float(x.shared("lambda")),
                                         normalize=bool(x.shared("normalize")))

    return merge_16bit


def _rescale(matches: bool | None, method: str) -> OptionCheck:
    """mergekit's `rescale` scales pruned task vectors back to their L1 norm. Ours: DARE
    always rescales (by 1/density, as the paper does); the magnitude trims never do; with no
    trim it changes nothing (`matches` None)."""

    def check(value: Any) -> str | None:
        if not isinstance(value, bool):
            return f"expected true or false, got {value!r}"
        if matches is True and not value:
            return ("false is not supported: evomerge's DARE always rescales survivors by "
                    "1/density")
        if matches is False and value:
            return (f"true (L1 rescaling of the trimmed task vectors) is not supported for "
                    f"{method}")
        return None

    return check


def _any(value: Any) -> str | None:
    return None  # int8_mask: the dtype of mergekit's sign mask, no effect on the weights


_DARE_NOTE = ("evomerge draws DARE's random drops from the recipe seed and rescales survivors "
              "by 1/density; mergekit draws from torch's global generator and rescales to the "
              "L1 norm, so the weights differ")


def _method(name: str, trim: _Trim, consensus: bool, normalize: bool) -> MergeMethod:
    per_source = {_Trim.NONE: (WEIGHT,), _Trim.MAGNITUDE: (WEIGHT, DENSITY),
                  _Trim.OUTLIERS: (WEIGHT, DENSITY, GAMMA), _Trim.DARE: (WEIGHT, DENSITY)}[trim]
    dare = trim is _Trim.DARE
    return register(MergeMethod(
        name=name, mergekit_name=name,
        per_source=per_source, shared=(LAMBDA, NORMALIZE.with_default(normalize)),
        needs_base=True,
        merge=_float32(trim, consensus),
        merge_16bit=None if dare else _16bit(trim, consensus),
        stochastic=dare,
        mergekit_options={"int8_mask": _any,
                          "rescale": _rescale(True if dare else None if trim is _Trim.NONE
                                              else False, name)},
        mergekit_note=_DARE_NOTE if dare else None,
    ))


# mergekit 0.1.5's defaults for `normalize`
TASK_ARITHMETIC = _method("task_arithmetic", _Trim.NONE, consensus=False, normalize=False)
TIES = _method("ties", _Trim.MAGNITUDE, consensus=True, normalize=True)
DARE_LINEAR = _method("dare_linear", _Trim.DARE, consensus=False, normalize=False)
DARE_TIES = _method("dare_ties", _Trim.DARE, consensus=True, normalize=False)
BREADCRUMBS = _method("breadcrumbs", _Trim.OUTLIERS, consensus=False, normalize=False)
BREADCRUMBS_TIES = _method("breadcrumbs_ties", _Trim.OUTLIERS, consensus=True, normalize=False)
