"""Parameter space (PS, docs/design.md §3): merge parameters per source × tensor kind × layer group.

The genome lives in the unit box [0, 1]^n so that one CMA-ES step size (σ₀ = 1/6, x0 = 0.5,
the paper's setting) fits every gene; `decode` scales each gene into its parameter's range.

Gene order (source-major; `describe()` lists the names):

1. for each source k, for each per-source parameter p (weight, density, gamma — those the
   searched method(s) read), for each tensor kind in `kinds`, for each layer group g:
   ``src{k}.{p}[.{kind}][.g{g}]``;
2. for each shared parameter with a search range (``t`` when slerp is searched; ``lambda``,
   an opt-in gene, when `search_lambda`), the same kind × group cells: ``{p}[.{kind}][.g{g}]``;
3. when several methods are searched, one last gene ``method``: [0, 1] cut into equal bins,
   one per method in the given order.

With a method choice the genome keeps every method's genes (fixed dimension); decoding keeps
only those the chosen method reads. Which parameters a method reads, their ranges and the gene
order (the parameters' declaration order) come from the method registry, evomerge.merge_methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evomerge.merge_methods import METHODS, SEARCH_RANGES, declared_params, get_method
from evomerge.models.architecture import TENSOR_KINDS
from evomerge.recipe import Recipe
from evomerge.space.base import Space

# Ranges a gene's [0, 1] maps onto, per parameter (evomerge.merge_methods.params says why).
DEFAULT_RANGES: dict[str, tuple[float, float]] = dict(SEARCH_RANGES)


class ParameterSpace(Space):
    """Genome ↔ parameter-merge Recipe; see the module docstring for the gene order."""

    def __init__(
        self,
        sources: Sequence[str],
        base: str | None = None,
        method: str | None = None,
        methods: Sequence[str] | None = None,
        groups: int = 1,
        kinds: Sequence[str] = ("default",),
        weight_range: tuple[float, float] | None = None,
        density_range: tuple[float, float] | None = None,
        ranges: Mapping[str, tuple[float, float]] | None = None,
        search_lambda: bool = False,
        dtype: str | None = None,
        seed: int = 0,
    ) -> None:
        if (method is None) == (methods is None):
            raise ValueError("give exactly one of `method` or `methods`")
        self.methods: list[str] = [method] if method is not None else list(methods or [])
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods: need distinct method names, got {self.methods}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown} (known: {sorted(METHODS)})")
        if not sources:
            raise ValueError("sources: need at least one source model")
        if groups < 1:
            raise ValueError(f"groups: need at least 1, got {groups}")
        self.kinds = list(kinds)
        allowed = set(TENSOR_KINDS) | {"default"}
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds: need distinct kinds, got {self.kinds}")
        if set(self.kinds) - allowed:
            raise ValueError(f"kinds: unknown {sorted(set(self.kinds) - allowed)}")
        # A kind map without "default" leaves uncovered tensors at the method default (weight
        # 1.0), which no gene controls: refuse it rather than search a silently fixed part.
        if "default" not in self.kinds and not set(TENSOR_KINDS) <= set(self.kinds):
            raise ValueError(
                f"kinds: {self.kinds} leave {sorted(set(TENSOR_KINDS) - set(self.kinds))} "
                "uncovered; add 'default'"
            )
        self.sources = list(sources)
        self.base = base
        self.groups = groups
        self.dtype = dtype
        self.seed = seed
        self.ranges = dict(DEFAULT_RANGES)
        self.ranges.update(ranges or {})
        if weight_range is not None:
            self.ranges["weight"] = weight_range
        if density_range is not None:
            self.ranges["density"] = density_range
        for name, (lo, hi) in self.ranges.items():
            if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                raise ValueError(f"ranges.{name}: need finite lo <= hi, got {(lo, hi)}")

        specs = [get_method(m) for m in self.methods]
        opted_in = {"lambda"} if search_lambda else set()
        searched = [p for p in declared_params()
                    if p.search is not None and (not p.opt_in or p.name in opted_in)]
        per_source = {p.name for s in specs for p in s.per_source}
        shared = {p.name for s in specs for p in s.shared}
        self.per_source_params = [p.name for p in searched if p.name in per_source]
        self.shared_params: list[str] = [p.name for p in searched if p.name in shared]
        self._cells = [(k, g) for k in self.kinds for g in range(groups)]
        self._names = self._gene_names()
        for m in self.methods:  # fail at construction, not mid-search
            self._recipe(m, np.full(self.dim, 0.5))

    # --- Space ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Number of genes: per-source and shared parameter cells, plus the method gene if any."""
        return len(self._names)

    @property
    def lower(self) -> np.ndarray:
        """Zeros: genes live in the unit box and decode scales them into their ranges."""
        return np.zeros(self.dim)

    @property
    def upper(self) -> np.ndarray:
        """Ones: genes live in the unit box and decode scales them into their ranges."""
        return np.ones(self.dim)

    def initial(self) -> np.ndarray:
        """0.5 everywhere: the paper's x0, the centre of the box."""
        return np.full(self.dim, 0.5)

    def decode(self, genome: np.ndarray) -> Recipe:
        """The recipe of the genome's method, each gene scaled from [0, 1] into its range."""
        x = self._check(genome)
        return self._recipe(self.method_of(x), x)

    def encode(self, method: str, parameters: Mapping[str, float | Sequence[float]]
               ) -> np.ndarray:
        """The genome of a hand-set recipe: `method` with `parameters` (a per-source one as one
        value or one per source) in every tensor kind and layer group; parameters left out
        take the method's default. ValueError names what this space cannot express."""
        if method not in self.methods:
            raise ValueError(f"{method} is not a method of this space ({', '.join(self.methods)})")
        spec = get_method(method)
        x = np.full(self.dim, 0.5)
        n = len(self._cells)
        k_sources = len(self.sources)

        def unit(name: str, value: float) -> float:
            lo, hi = self.ranges[name]
            if hi == lo:
                if value != lo:
                    raise ValueError(f"{name} = {value:g}: the space fixes it at {lo:g}")
                return 0.5
            u = (float(value) - lo) / (hi - lo)
            if not -1e-12 <= u <= 1 + 1e-12:
                raise ValueError(f"{name} = {value:g} is outside the space's range "
                                 f"[{lo:g}, {hi:g}]")
            return min(1.0, max(0.0, u))

        given = dict(parameters)
        fixed = [p for p in given if p not in self.per_source_params + self.shared_params]
        for p in fixed:
            default = {**spec.per_source_defaults, **spec.shared_defaults}.get(p)
            if given[p] != default:
                raise ValueError(f"{p}: not searched in this space (it stays {default})")
        pos = 0
        for k in range(k_sources):
            for p in self.per_source_params:
                if p in spec.per_source_defaults:
                    value = given.get(p, spec.per_source_defaults[p])
                    if isinstance(value, Sequence):
                        value = value[k]
                    x[pos: pos + n] = unit(p, float(value))
                pos += n
        for p in self.shared_params:
            if p in spec.shared_defaults:
                value = given.get(p, spec.shared_defaults[p])
                if isinstance(value, Sequence):
                    raise ValueError(f"{p}: one value (a parameter shared by the sources)")
                x[pos: pos + n] = unit(p, float(value))
            pos += n
        if len(self.methods) > 1:
            x[-1] = (self.methods.index(method) + 0.5) / len(self.methods)
        return x

    # --- helpers ----------------------------------------------------------------------------
    def describe(self) -> list[str]:
        """Gene names in genome order."""
        return list(self._names)

    def method_of(self, genome: np.ndarray) -> str:
        """The method a genome picks: equal bins of the last gene when several are searched."""
        if len(self.methods) == 1:
            return self.methods[0]
        u = float(np.clip(genome[-1], 0.0, 1.0))
        return self.methods[min(int(u * len(self.methods)), len(self.methods) - 1)]

    def _gene_names(self) -> list[str]:
        def cell_suffix(kind: str, g: int) -> str:
            s = f".{kind}" if self.kinds != ["default"] else ""
            return s + (f".g{g}" if self.groups > 1 else "")

        names = [
            f"src{k}.{p}{cell_suffix(kind, g)}"
            for k in range(len(self.sources))
            for p in self.per_source_params
            for kind, g in self._cells
        ]
        names += [
            f"{p}{cell_suffix(kind, g)}" for p in self.shared_params for kind, g in self._cells
        ]
        if len(self.methods) > 1:
            names.append("method")
        return names


    def _value(self, name: str, unit: np.ndarray) -> Any:
        """One parameter's recipe value from its cells' genes (kind-major, then group)."""
        lo, hi = self.ranges[name]
        vals = [float(lo + u * (hi - lo)) for u in unit]
        per_kind: dict[str, Any] = {}
        for i, kind in enumerate(self.kinds):
            row = vals[i * self.groups : (i + 1) * self.groups]
            per_kind[kind] = row[0] if self.groups == 1 else {"groups": row}
        return per_kind["default"] if self.kinds == ["default"] else per_kind

    def _recipe(self, method: str, x: np.ndarray) -> Recipe:
        spec = get_method(method)
        n = len(self._cells)
        pos = 0
        sources = []
        for ref in self.sources:
            params = {}
            for p in self.per_source_params:
                if p in spec.per_source_defaults:
                    params[p] = self._value(p, x[pos : pos + n])
                pos += n
            sources.append({"model": ref, "parameters": params})
        shared = {}
        for p in self.shared_params:
            if p in spec.shared_defaults:
                shared[p] = self._value(p, x[pos : pos + n])
            pos += n
        data: dict[str, Any] = {
            "method": method,
            "sources": sources,
            "base": self.base,
            "parameters": shared,
            "dtype": self.dtype,
            "seed": self.seed,
        }
        return Recipe.from_dict({k: v for k, v in data.items() if v is not None}, "<ps genome>")
