"""The Recipe: a pure, serialisable description of a merged model.

A recipe is data (no torch here), so it can be logged, hashed, shipped to a remote worker and
exported. Parameter values may vary per layer and per tensor kind; `resolve_parameter` is the
single place that decides which number applies to which tensor.

Parameter value forms (any parameter, at global or per-source level):

* a number: the same value everywhere;
* a list of numbers: a gradient interpolated over the decoder layers (mergekit 0.1.5
  semantics: t = layer / (L - 1); tensors outside the layers — embeddings, final norm,
  head — take t = 0, i.e. the first value);
* ``{"groups": [v0, ..., vG-1]}``: piecewise constant over G equal groups of decoder layers
  (embeddings take the first group, final norm and head the last);
* a mapping from tensor kind (``attention``, ``mlp``, ``norm``, ``embed``, ``head``, ``other``,
  ``default``; see evomerge.models.architecture) to any of the forms above;
* a list of ``{"filter": str | None, "value": ...}`` conditions (mergekit's form): the first
  whose filter is a tensor kind equal to the tensor's kind, or a substring of its name, or
  missing / ``"*"``, applies.

What each method reads (its parameters, defaults, whether it needs a base) comes from the
method registry, evomerge.merge_methods; reading a recipe file is evomerge.recipe_file's job.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from evomerge.merge_methods import METHODS, PARAM_RANGES, MergeMethod, get_method
from evomerge.models.architecture import TENSOR_KINDS, TensorSite
from evomerge.models.refs import portable_ref

# a layer route (data-flow space): layers are copied, not merged, so no registered method
ROUTE_METHOD = "passthrough"
Method = Literal[(*METHODS, ROUTE_METHOD)]  # type: ignore[valid-type]
DType = Literal["float32", "float16", "bfloat16"]
_KIND_KEYS = set(TENSOR_KINDS) | {"default"}

# tokenizer_source values that name no model (mergekit's)
TOKENIZER_KEYWORDS = ("base", "union")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and field at fault."""


def _check_param(name: str, value: Any, where: str) -> None:
    """Validate one parameter setting (its range too, for the parameters that have one, e.g.
    a density of 1.5: a typo the methods would otherwise treat silently as 1)."""
    _check_value(value, where, name if name in PARAM_RANGES else None)


def _check_value(value: Any, where: str, ranged: str | None = None) -> None:
    """Validate a parameter value's shape (and range, for the `ranged` parameter); raise
    ValueError naming `where`."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{where}: must be finite, got {value}")
        if ranged is not None:
            lo, hi = PARAM_RANGES[ranged]
            if not lo <= value <= hi:
                raise ValueError(f"{where}: {value} is outside [{lo:g}, {hi:g}], the range of "
                                 f"{ranged}")
        return
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{where}: empty list")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            for i, v in enumerate(value):
                _check_value(v, f"{where}[{i}]", ranged)
            return
        for i, cond in enumerate(value):
            if not isinstance(cond, dict) or "value" not in cond:
                raise ValueError(
                    f"{where}[{i}]: expected a number (gradient) or a "
                    "{filter: ..., value: ...} condition"
                )
            extra = set(cond) - {"filter", "value"}
            if extra:
                raise ValueError(f"{where}[{i}]: unknown keys {sorted(extra)}")
            if cond.get("filter") is not None and not isinstance(cond["filter"], str):
                raise ValueError(f"{where}[{i}].filter: must be a string")
            _check_value(cond["value"], f"{where}[{i}].value", ranged)
        return
    if isinstance(value, dict):
        if set(value) == {"groups"}:
            groups = value["groups"]
            if not isinstance(groups, list) or not groups:
                raise ValueError(f"{where}.groups: expected a non-empty list of numbers")
            for i, v in enumerate(groups):
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise ValueError(f"{where}.groups[{i}]: expected a number")
                _check_value(v, f"{where}.groups[{i}]", ranged)
            return
        unknown = set(value) - _KIND_KEYS
        if unknown:
            raise ValueError(
                f"{where}: unknown tensor kinds {sorted(unknown)}; "
                f"use {sorted(_KIND_KEYS)} or {{groups: [...]}}"
            )
        for k, v in value.items():
            _check_value(v, f"{where}.{k}", ranged)
        return
    raise ValueError(f"{where}: unsupported value {value!r}")


# A filter with this prefix is a plain substring of the tensor name even when it spells a
# tensor kind (mergekit's `filter: attention` matches post_attention_layernorm, not self_attn).
NAME_FILTER_PREFIX = "name:"


def _filter_matches(filt: str | None, site: TensorSite) -> bool:
    if filt is None or filt == "*":
        return True
    if filt.startswith(NAME_FILTER_PREFIX):
        return filt[len(NAME_FILTER_PREFIX):] in site.name
    if filt in TENSOR_KINDS:
        return site.kind == filt
    return filt in site.name


def chat_template_kind(template: str) -> str:
    """'auto', 'name' (one of mergekit's built-in templates) or 'jinja', by mergekit 0.1.5's
    rules; anything else is refused."""
    if template == "auto":
        return "auto"
    if len(template) < 256 and "\n" not in template and "{" not in template:
        return "name"
    if len(template) < 20 or "{" not in template:
        raise ValueError(f"{template[:40]!r} is neither a template name nor a Jinja template")
    return "jinja"


def gradient_at(values: list[float], t: float) -> float:
    """A gradient (mergekit's list of values over the layers) at t in [0, 1], in mergekit's
    arithmetic, so the very same float."""
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def evaluate_value(value: Any, site: TensorSite) -> Any:
    """The concrete value of one parameter setting at one tensor, or None if no filter matched."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, list):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return gradient_at(value, site.t)
        for cond in value:
            if _filter_matches(cond.get("filter"), site):
                return evaluate_value(cond["value"], site)
        return None
    if isinstance(value, dict):
        if set(value) == {"groups"}:
            groups = value["groups"]
            idx = min(len(groups) - 1, int(site.group_position * len(groups)))
            return groups[idx]
        if site.kind in value:
            return evaluate_value(value[site.kind], site)
        if "default" in value:
            return evaluate_value(value["default"], site)
        return None
    raise TypeError(f"unsupported parameter value {value!r}")


class Source(BaseModel):
    """One input model and its per-source parameters."""

    model_config = ConfigDict(extra="forbid")

    model: str  # a model, or `base+adapter` (a PEFT LoRA adapter over its base)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _explicit_adapter(cls, data: Any) -> Any:
        """`{model: base, adapter: dir}` is the explicit form of `model: base+adapter`."""
        if isinstance(data, dict) and "adapter" in data:
            data = dict(data)
            adapter = data.pop("adapter")
            if not isinstance(adapter, str) or not adapter:
                raise ValueError("adapter: a PEFT adapter directory (a non-empty string)")
            data["model"] = f"{data.get('model', '')}+{adapter}"
        return data

    @field_validator("parameters")
    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        for name, value in params.items():
            _check_param(name, value, name)
        return params


class TensorScale(BaseModel):
    """One entry of a hop's `tensor_scale`: mergekit passthrough's `scale` condition."""

    model_config = ConfigDict(extra="forbid")

    # a substring of the tensor's name in its source (mergekit's filter); None: any tensor
    filter: str | None = None
    value: float = Field(allow_inf_nan=False)

    @field_validator("filter")
    @classmethod
    def _any(cls, value: str | None) -> str | None:
        return None if value in ("", "*") else value  # mergekit reads both as "any tensor"


def matching_scale(entries: list[TensorScale] | None, name: str) -> TensorScale | None:
    """The entry that applies to tensor `name` (mergekit's rule: the first whose filter is a
    substring of the name); None: the tensor is copied as it is."""
    for entry in entries or []:
        if entry.filter is None or entry.filter in name:
            return entry
    return None


class RouteHop(BaseModel):
    """One hop of a data-flow route: run `layer` of `source`, input scaled by `scale`."""

    model_config = ConfigDict(extra="forbid")

    source: int = Field(ge=0, description="index into Recipe.sources")
    layer: int = Field(ge=0)
    # > 0: the runtime and the export fold it into the hop's output projections, and a zero
    # or negative input scale has no such form (RMSNorm(c·x) = RMSNorm(x) only for c > 0)
    scale: float = Field(1.0, gt=0, allow_inf_nan=False)
    # mergekit passthrough's per-tensor `scale` (what scaled layer stacks import as): each of
    # the hop's tensors is multiplied by the value of the entry `matching_scale` picks for its
    # name in the source (e.g. model.layers.2.self_attn.o_proj.weight); the routed runtime
    # multiplies the owning module's output instead, which is the same function
    tensor_scale: list[TensorScale] | None = None

    @field_validator("tensor_scale")
    @classmethod
    def _check_tensor_scale(cls, entries: list[TensorScale] | None
                            ) -> list[TensorScale] | None:
        for i, entry in enumerate((entries or [])[:-1]):
            if entry.filter is None:
                raise ValueError(f"entry {i + 1} never applies: entry {i} has no filter, so "
                                 f"it applies to every tensor; remove entry {i + 1}")
        return entries or None  # [] scales nothing: the same hop, the same digest


class LayerSlice(BaseModel):
    """Parameters that apply to a half-open range of decoder layers (mergekit's `slices:`).

    Gradients inside a slice run over the slice's own layers; embeddings read the first slice
    and the final norm / head the last, as mergekit does.
    """

    model_config = ConfigDict(extra="forbid")

    layers: tuple[int, int]
    parameters: dict[str, Any] = Field(default_factory=dict)
    source_parameters: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> LayerSlice:
        if not 0 <= self.layers[0] < self.layers[1]:
            raise ValueError(f"layers: {list(self.layers)} is not a half-open range [start, end)")
        for name, value in self.parameters.items():
            _check_param(name, value, f"parameters.{name}")
        for i, params in enumerate(self.source_parameters):
            for name, value in params.items():
                _check_param(name, value, f"source_parameters[{i}].{name}")
        return self

    def localise(self, site: TensorSite) -> TensorSite:
        """The site as the slice sees it: gradients run over the slice's own layers."""
        if site.layer is None:
            return site
        return TensorSite(
            site.name, site.kind, site.layer - self.layers[0], self.layers[1] - self.layers[0]
        )


class Recipe(BaseModel):
    """A merged model, described: sources, base, method, parameters, dtype, seed, route."""

    model_config = ConfigDict(extra="forbid")

    method: Method
    sources: list[Source] = Field(min_length=1)
    base: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: DType | None = None
    # None: merge in float32 (evomerge's way). float16 / bfloat16: round the inputs to it and
    # run mergekit's arithmetic step by step in it, to give the weights mergekit gives for a
    # config with that `dtype` (see evomerge.kernels.mergekit_16bit).
    compute_dtype: DType | None = None
    seed: int = 0
    # "base" (the base model, else the first source), "union" or a model: that tokenizer is
    # written, once every model is checked to share its vocabulary (then mergekit leaves the
    # embeddings as they are; evomerge builds no merged vocabulary and refuses otherwise)
    tokenizer_source: str | None = None
    # "auto", a mergekit built-in template name (chatml, alpaca, ...) or a Jinja template
    chat_template: str | None = None
    # method passthrough: the decoder layers run in this order (docs/design.md §4); the embeddings
    # come from sources[embed_source] (default 0), the final norm and the head from
    # sources[head_source] (default: the embeddings' source)
    route: list[RouteHop] | None = Field(None, min_length=1)
    embed_source: int | None = Field(None, ge=0)
    head_source: int | None = Field(None, ge=0)
    slices: list[LayerSlice] | None = None
    # model references as the recipe file wrote them (resolved ref → written), for outputs
    _written: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("parameters")
    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        for name, value in params.items():
            _check_param(name, value, name)
        return params

    @field_validator("chat_template")
    @classmethod
    def _check_chat_template(cls, value: str | None) -> str | None:
        if value is not None:
            chat_template_kind(value)
        return value

    @property
    def method_spec(self) -> MergeMethod | None:
        """The registered method this recipe merges with; None for a layer route."""
        return None if self.method == ROUTE_METHOD else get_method(self.method)

    @model_validator(mode="after")
    def _check_method(self) -> Recipe:
        spec = self.method_spec
        per_source = spec.per_source_defaults if spec else {}
        known = spec.parameter_names if spec else set()
        for name in self.parameters:
            if name not in known:
                raise ValueError(
                    f"parameters.{name}: not a parameter of method {self.method!r} "
                    f"(known: {sorted(known)})"
                )
        for i, src in enumerate(self.sources):
            for name in src.parameters:
                if name not in per_source:
                    raise ValueError(
                        f"sources[{i}].parameters.{name}: not a per-source parameter of "
                        f"method {self.method!r} (known: {sorted(per_source)})"
                    )
        if spec is not None and spec.needs_base and self.base is None:
            raise ValueError(f"base: method {self.method!r} needs a base model")
        if spec is not None and spec.check_models is not None:
            problem = spec.check_models(len(self.sources), bool(self.base))
            if problem:
                raise ValueError(problem)
        if self.slices is not None:
            if not self.slices:
                raise ValueError("slices: empty list (leave it out instead)")
            end = 0
            for i, sl in enumerate(self.slices):
                if sl.layers[0] != end:
                    raise ValueError(
                        f"slices[{i}].layers: starts at {sl.layers[0]}, expected {end} "
                        "(slices must tile the layers in order)"
                    )
                end = sl.layers[1]
                if len(sl.source_parameters) > len(self.sources):
                    raise ValueError(
                        f"slices[{i}].source_parameters: {len(sl.source_parameters)} entries "
                        f"for {len(self.sources)} sources"
                    )
                for j, params in enumerate(sl.source_parameters):
                    for name in params:
                        if name not in per_source:
                            raise ValueError(
                                f"slices[{i}].source_parameters[{j}].{name}: not a per-source "
                                f"parameter of method {self.method!r}"
                            )
                for name in sl.parameters:
                    if name not in known:
                        raise ValueError(
                            f"slices[{i}].parameters.{name}: not a parameter of method "
                            f"{self.method!r}"
                        )
        refusal = spec.precision_refusal if spec else None
        if self.compute_dtype not in (None, "float32") and refusal:
            raise ValueError(
                f"compute_dtype: {self.compute_dtype} reproduces mergekit's arithmetic, but "
                f"{refusal}; leave it out"
            )
        self._check_route()
        return self

    def _check_route(self) -> None:
        if self.method == ROUTE_METHOD and self.route is None:
            raise ValueError("route: method passthrough copies layers along a route; give one")
        if self.route is not None and self.method != ROUTE_METHOD:
            raise ValueError(f"method: a layer route is built by method passthrough, not "
                             f"{self.method!r}")
        if self.route is None:
            for key in ("embed_source", "head_source"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: only a layer route (method passthrough) has one")
            return
        for key in ("base", "slices", "compute_dtype"):
            if getattr(self, key) is not None:
                raise ValueError(f"{key}: a layer route copies layers and merges nothing; "
                                 "leave it out")
        if self.parameters or any(s.parameters for s in self.sources):
            raise ValueError("parameters: a layer route has none (its scales are per hop)")
        n = len(self.sources)
        for key in ("embed_source", "head_source"):
            value = getattr(self, key)
            if value is not None and value >= n:
                raise ValueError(f"{key}: {value} is not a source index (have {n})")
        for i, hop in enumerate(self.route):
            if hop.source >= n:
                raise ValueError(f"route[{i}].source: {hop.source} is not a source index "
                                 f"(have {n})")

    @property
    def route_ends(self) -> tuple[int, int]:
        """(source of the embeddings, source of the final norm and head) of a route."""
        embed = self.embed_source or 0
        return embed, embed if self.head_source is None else self.head_source

    # --- parameter resolution -------------------------------------------------------------
    def _slice_for(self, site: TensorSite) -> LayerSlice | None:
        if not self.slices:
            return None
        if site.layer is None:
            return self.slices[0] if site.kind == "embed" else self.slices[-1]
        for sl in self.slices:
            if sl.layers[0] <= site.layer < sl.layers[1]:
                return sl
        raise RecipeError(
            f"slices: no slice covers layer {site.layer} (tensor {site.name}); the slices end "
            f"at layer {self.slices[-1].layers[1]}"
        )

    def _settings(self, site: TensorSite, source_index: int | None
                  ) -> Iterator[tuple[Mapping[str, Any], TensorSite]]:
        """(settings, site) pairs from highest to lowest precedence, as mergekit orders them."""
        sl = self._slice_for(site)
        if sl is not None:
            local = sl.localise(site)
            if source_index is not None and source_index < len(sl.source_parameters):
                yield sl.source_parameters[source_index], local
            yield sl.parameters, local
        if source_index is not None:
            yield self.sources[source_index].parameters, site
        yield self.parameters, site

    def source_param(self, source_index: int, name: str, site: TensorSite) -> float:
        """A per-source parameter at one tensor: the most specific setting, else the default."""
        for settings, where in self._settings(site, source_index):
            if name in settings:
                value = evaluate_value(settings[name], where)
                if value is not None:
                    return float(value)
        spec = self.method_spec
        default = spec.per_source_defaults.get(name) if spec else None
        if default is None:
            raise RecipeError(
                f"sources[{source_index}].parameters.{name}: no value applies to tensor "
                f"{site.name}"
            )
        return float(default)

    def shared_param(self, name: str, site: TensorSite) -> Any:
        """A method-level parameter (lambda, normalize, t) at one tensor."""
        for settings, where in self._settings(site, None):
            if name in settings:
                value = evaluate_value(settings[name], where)
                if value is not None:
                    return value
        spec = self.method_spec
        if spec is None:
            raise KeyError(name)  # a layer route reads no parameters
        return spec.shared_defaults[name]

    def summary(self, width: int = 60) -> str:
        """One line for a report table: a route's hops, or the method and its numbers."""
        if self.route is not None:
            hops = " ".join(f"{h.source}.{h.layer}" for h in self.route)
            text = f"route {hops}"
            suffix = f" ({len(self.route)} hops)"
        else:
            def show(v: Any) -> str:
                if isinstance(v, int | float) and not isinstance(v, bool):
                    return f"{v:.2f}"
                if isinstance(v, dict) and isinstance(v.get("groups"), list):
                    return "[" + " ".join(show(x) for x in v["groups"]) + "]"
                return "…"

            parts = [",".join(f"{k[0]}{show(v)}" for k, v in src.parameters.items())
                     for src in self.sources]
            text = f"{self.method} " + " | ".join(p or "-" for p in parts)
            suffix = ""
        if len(text) + len(suffix) > width:
            text = text[: width - len(suffix) - 1] + "…"
        return text + suffix

    # --- references -----------------------------------------------------------------------
    def model_refs(self) -> list[str]:
        """Every model reference: base, sources, tokenizer source (when it names a model)."""
        refs = ([self.base] if self.base else []) + [s.model for s in self.sources]
        if self.tokenizer_source and self.tokenizer_source not in TOKENIZER_KEYWORDS:
            refs.append(self.tokenizer_source)
        return refs

    def written_ref(self, ref: str) -> str | None:
        """How the recipe file wrote `ref`, when it was read from one."""
        return self._written.get(ref)

    def with_written_refs(self, written: Mapping[str, str]) -> Recipe:
        """A copy that remembers how a recipe file wrote its references (resolved → written),
        so outputs can name them as the user did (evomerge.recipe_file sets it)."""
        out = self.model_copy()
        out._written = dict(written)
        return out

    def portable(self, relative_to: Path | None = None) -> Recipe:
        """This recipe with references another machine can use: local directories relative
        to `relative_to` (when given; else as the recipe file wrote them), hub ids pinned to
        the revision found in the local cache."""
        def conv(ref: str) -> str:
            return portable_ref(ref, self._written.get(ref), relative_to)

        tok = self.tokenizer_source
        return self.model_copy(update={
            "sources": [s.model_copy(update={"model": conv(s.model)}) for s in self.sources],
            "base": conv(self.base) if self.base else None,
            "tokenizer_source": conv(tok) if tok and tok not in TOKENIZER_KEYWORDS else tok,
        })

    # --- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (what `digest` hashes and `to_yaml` writes)."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=False)

    def to_yaml(self) -> str:
        """The recipe as our YAML (`from_yaml` reads it back unchanged)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """Stable hash of the recipe (dedup cache key, provenance)."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<recipe>") -> Recipe:
        """Validate plain data; a RecipeError names `origin` and the field at fault."""
        if not isinstance(data, dict):
            raise RecipeError(f"{origin}: expected a mapping at the top level")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecipeError(f"{origin}: {describe_validation_error(exc)}") from None

    @classmethod
    def from_yaml(cls, text: str, origin: str = "<recipe>") -> Recipe:
        """Parse and validate our YAML; a RecipeError names `origin` and the field at fault."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{origin}: not valid YAML: {exc}") from None
        return cls.from_dict(data, origin)


def describe_validation_error(exc: ValidationError, skip: frozenset[str] = frozenset()) -> str:
    """pydantic's errors as `field.path[i]: message`, in the words of this tool (every config
    file evomerge reads reports them so); `skip`: location parts to leave out."""
    parts = []
    for err in exc.errors():
        loc = ""
        for p in err["loc"]:
            if p in skip:
                continue
            loc += f"[{p}]" if isinstance(p, int) else (f".{p}" if loc else str(p))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "not a known key here (a typo?)"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
