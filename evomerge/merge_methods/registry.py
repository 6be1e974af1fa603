"""The merge-method registry: each method declared once, read by every layer (docs/design.md §3).

A `MergeMethod` record holds what recipe validation, the parameter space, mergekit import and
export, the float32 tensor merge, the 16-bit (mergekit precision) path and the in-place builds
need to know about one method, so none of them switches on method names. Parameters are
declared once too (`declare_param`): a parameter's range and gene are the same whichever
method reads it; only its default is per method.

Torch-free by design: recipe validation (recipe.py) and mergekit import (mergekit_yaml.py)
read this registry and must not load torch (tests/test_recipe.py). A method's tensor functions
take a `MergeInputs` (built torch-side, by evomerge.merge.tensor_merge) and import the torch
arithmetic they call when they first run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Param:
    """A parameter merge methods read: default, valid range and search range, in one place."""

    name: str
    default: float | bool
    # every value a recipe gives must lie here (a density of 1.5 is a typo the arithmetic
    # would silently clamp); None: any finite value
    valid: tuple[float, float] | None = None
    # the range a parameter-space gene's [0, 1] maps onto; None: never searched (normalize)
    search: tuple[float, float] | None = None
    # a gene only when the space asks for it (lambda: `search_lambda`)
    opt_in: bool = False

    def with_default(self, default: float | bool) -> Param:
        """The same parameter with one method's own default (normalize: true for linear)."""
        return replace(self, default=default)


class MergeInputs(Protocol):
    """One output tensor's inputs, and its parameters resolved at that tensor: what a
    method's tensor functions are given (evomerge.merge.tensor_merge builds it)."""

    @property
    def base(self) -> torch.Tensor | None:
        """The base model's tensor (None when the recipe has no base)."""

    @property
    def sources(self) -> Sequence[torch.Tensor]:
        """The sources' tensors, in recipe order."""

    @property
    def out_dtype(self) -> torch.dtype:
        """The dtype the float32 functions write their result in."""

    def per_source(self, name: str) -> list[float]:
        """A per-source parameter's value for each source, at this tensor."""

    def shared(self, name: str) -> Any:
        """A shared (method-level) parameter's value at this tensor."""

    def magnitude_ranks(self, densities: Sequence[float]) -> list[torch.Tensor | None] | None:
        """Cached |τ_k| ranks of the sources that are trimmed (None: no cache; compute)."""

    def dare_generators(self) -> list[torch.Generator]:
        """One generator per source, seeded from (recipe seed, tensor, source)."""

    def dare_uniforms(self, densities: Sequence[float]) -> list[torch.Tensor | None] | None:
        """Cached DARE draws of the sources that drop entries (None: no cache; draw)."""


# merges one tensor (float32 functions honour inputs.out_dtype; 16-bit ones return the
# compute dtype, and the caller casts)
TensorFunction = Callable[[MergeInputs], "torch.Tensor"]
# (number of sources, whether there is a base) → the problem, naming the field, or None
ModelCheck = Callable[[int, bool], "str | None"]
# a mergekit parameter's value → the problem, or None when evomerge matches it
OptionCheck = Callable[[Any], "str | None"]


@dataclass(frozen=True, kw_only=True)
class MergeMethod:
    """Everything evomerge knows about one merge method; see the module docstring."""

    name: str
    # what mergekit configs call it; None: mergekit has no such method (never imported,
    # exported as an evomerge recipe only)
    mergekit_name: str | None
    per_source: tuple[Param, ...]
    shared: tuple[Param, ...]
    needs_base: bool
    # float32 arithmetic, chunk by chunk, bit-identical with or without the selection cache
    merge: TensorFunction
    # mergekit's sequence of operations at a 16-bit `compute_dtype` on inputs already rounded
    # to it; None: the method cannot reproduce mergekit's weights (`precision_refusal`)
    merge_16bit: TensorFunction | None = None
    # its weights depend on random draws, which never match mergekit's
    stochastic: bool = False
    # a constraint on the number of models beyond needs_base (slerp: exactly two)
    check_models: ModelCheck | None = None
    # mergekit parameters the method takes but evomerge drops once checked (they leave the
    # weights as evomerge computes them, e.g. int8_mask)
    mergekit_options: Mapping[str, OptionCheck] = field(default_factory=dict)
    # mergekit merges `base_model` as one more input (linear), which our recipe lists as a
    # source; read in mergekit's `models:` form only
    mergekit_base_is_input: bool = False
    # mergekit refuses the config without `base_model`, though evomerge needs none (slerp)
    mergekit_requires_base: bool = False
    # with a 16-bit `dtype`, mergekit rounds only the inputs and computes in float32 (linear,
    # slerp); otherwise it runs every step in the 16-bit dtype
    mergekit_16bit_inputs_only: bool = False
    # warned about on import: how evomerge's weights differ from mergekit's for this method
    mergekit_note: str | None = None

    @cached_property
    def per_source_defaults(self) -> dict[str, float | bool]:
        """Per-source parameter → default (per-source parameters may be given globally too)."""
        return {p.name: p.default for p in self.per_source}

    @cached_property
    def shared_defaults(self) -> dict[str, float | bool]:
        """Shared parameter → default (given at the recipe's or a slice's top level)."""
        return {p.name: p.default for p in self.shared}

    @cached_property
    def parameter_names(self) -> set[str]:
        """Every parameter the method reads."""
        return {p.name for p in self.per_source + self.shared}

    @property
    def precision_refusal(self) -> str | None:
        """Why mergekit's 16-bit arithmetic cannot be reproduced, None when it can."""
        if self.merge_16bit is not None:
            return None
        if self.stochastic:
            return f"{self.name}'s random drops never match mergekit's"
        return f"evomerge has no 16-bit path for {self.name}"


_PARAMS: dict[str, Param] = {}
_METHODS: dict[str, MergeMethod] = {}


def declare_param(param: Param) -> Param:
    """Add a parameter to the vocabulary; declaration order is the parameter space's gene
    order, so a new parameter goes last."""
    if param.name in _PARAMS:
        raise ValueError(f"parameter {param.name!r} is declared twice")
    _PARAMS[param.name] = param
    return param


def register(method: MergeMethod) -> MergeMethod:
    """Add a method (at import, from its module); returns it so the module can name it."""
    if method.name in _METHODS:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    if method.mergekit_name is not None and by_mergekit_name(method.mergekit_name) is not None:
        raise ValueError(f"merge method {method.name!r}: mergekit name "
                         f"{method.mergekit_name!r} is taken")
    names = [p.name for p in method.per_source + method.shared]
    if len(set(names)) != len(names):
        raise ValueError(f"merge method {method.name!r}: a parameter is listed twice")
    for p in method.per_source + method.shared:
        declared = _PARAMS.get(p.name)
        if declared is None or declared != replace(p, default=declared.default):
            raise ValueError(f"merge method {method.name!r}: parameter {p.name!r} differs from "
                             "its declaration (declare_param); only the default may")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """The method called `name`; ValueError (naming the field) for an unknown one."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"method: unknown merge method {name!r}") from None


def registered() -> tuple[MergeMethod, ...]:
    """Every method, in registration order."""
    return tuple(_METHODS.values())


def by_mergekit_name(name: Any) -> MergeMethod | None:
    """The method mergekit calls `name`, None when evomerge has none."""
    if name is None:
        return None
    return next((m for m in _METHODS.values() if m.mergekit_name == name), None)


def declared_params() -> tuple[Param, ...]:
    """The parameter vocabulary, in declaration (gene) order."""
    return tuple(_PARAMS.values())
