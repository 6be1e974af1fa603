"""mergekit YAML ⇄ Recipe.

Users already hold mergekit configs; importing them means `evomerge merge` accepts them as is.
Both of mergekit's forms are read: `models:` (one entry per model, parameters apply to all
layers) and `slices:` (per layer range; every slice must list the same models over the same
range). A `passthrough` layer stack (slices of one model's layer range each, from several
models) is a data-flow route, and is read as a route recipe; its `scale` parameters (mergekit's
per-tensor multipliers) become each hop's `tensor_scale`.
Parameter values (numbers, gradients, `{filter, value}` lists) carry over unchanged: the
Recipe evaluates them with mergekit's rules. What differs per method (its mergekit name, the
mergekit options it accepts, how mergekit treats its base and its 16-bit arithmetic) is read
from the method registry (evomerge.merge_methods), never from method names here. Reading a
file of either format is evomerge.recipe_file's job.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from evomerge.merge_methods import MergeMethod, by_mergekit_name, registered
from evomerge.models.architecture import MERGEKIT_KIND_ORDER, TENSOR_KINDS, mergekit_filters
from evomerge.models.refs import SourceError, resolve_model_ref
from evomerge.recipe import (
    NAME_FILTER_PREFIX,
    ROUTE_METHOD,
    TOKENIZER_KEYWORDS,
    Recipe,
    RecipeError,
    RouteHop,
    TensorScale,
    gradient_at,
    matching_scale,
)

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}
# mergekit 0.1.5's top-level keys; any other is ignored by mergekit (and warned about here)
_TOP_KEYS = {"merge_method", "base_model", "dtype", "out_dtype", "models", "slices", "modules",
             "parameters", "tokenizer_source", "tokenizer", "chat_template"}
# mergekit's method for layer stacks, which evomerge reads as routes (method ROUTE_METHOD)
_STACK = "passthrough"
# mergekit's names (the route families' too) for the tensors a passthrough stack takes from its
# first slice (the embeddings) and its last (the final norm and the head): they are scaled by
# that slice's `scale` too (read at t = 0), which a route never does
_FIRST_SLICE_TENSORS = ("model.embed_tokens.weight",)
_LAST_SLICE_TENSORS = ("model.norm.weight", "lm_head.weight")
# one condition of a passthrough `scale` setting: (filter or None, number or gradient)
_Condition = tuple[str | None, float | list[float]]


def _warn_unknown(entry: dict, known: set[str], where: str) -> None:
    for key in entry:
        if key not in known:
            log.warning("%s.%s: not a mergekit 0.1.5 key; ignored (mergekit ignores it too)",
                        where, key)


def _model_name(ref: Any, where: str) -> str:
    """A mergekit model reference as one string: 'path', 'path@revision', or 'base+lora' (a
    PEFT LoRA adapter over its base, which evomerge reads itself). Architecture overrides
    change the model, and are refused."""
    if isinstance(ref, dict) and "model" in ref and set(ref) - {"model", "lora",
                                                               "override_architecture"}:
        ref = ref["model"]  # a models:/sources: entry ({model: ..., parameters: ...})
    if isinstance(ref, str):
        return ref
    if isinstance(ref, dict):
        if ref.get("override_architecture") is not None:
            raise RecipeError(f"{where}.override_architecture: not supported (got "
                              f"{ref['override_architecture']!r})")
        inner = ref.get("model", ref)
        lora = ref.get("lora") if "model" in ref else None
        adapter = _model_name(lora, f"{where}.lora") if lora is not None else None
        if isinstance(inner, str):
            name = _model_name(inner, where)
        elif isinstance(inner, dict) and isinstance(inner.get("path"), str):
            rev = inner.get("revision")
            name = f"{inner['path']}@{rev}" if rev else inner["path"]
        else:
            raise RecipeError(f"{where}: cannot read model reference {ref!r}")
        return f"{name}+{adapter}" if adapter else name
    raise RecipeError(f"{where}: cannot read model reference {ref!r}")


def _name_filters(value: Any) -> Any:
    """mergekit filters are substrings of tensor names: keep them so where they spell one of
    our tensor kinds (or our `name:` prefix). A lone condition becomes a one-item list."""
    if isinstance(value, dict) and "value" in value and set(value) <= {"filter", "value"}:
        value = [value]
    if not isinstance(value, list):
        return value
    out = []
    for cond in value:
        if isinstance(cond, dict) and isinstance(cond.get("filter"), str):
            f = cond["filter"]
            if f in TENSOR_KINDS or f.startswith(NAME_FILTER_PREFIX):
                cond = {**cond, "filter": NAME_FILTER_PREFIX + f}
        out.append(cond)
    return out


def _params(raw: Any, where: str, spec: MergeMethod) -> dict[str, Any]:
    """The parameters the method reads. mergekit ignores the others silently; we name them.
    Settings that would make mergekit's weights differ from ours are refused."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: parameters must be a mapping")
    used = spec.parameter_names
    out = {}
    for k, v in raw.items():
        check = spec.mergekit_options.get(k)
        if check is not None:  # a mergekit option evomerge matches once checked, then drops
            problem = check(v)
            if problem:
                raise RecipeError(f"{where}.{k}: {problem}")
            continue
        if k not in used:
            log.warning("%s.%s: not used by %s, ignored (as mergekit does)", where, k,
                        spec.name)
            continue
        out[k] = _name_filters(v)
    return out


def _dtype(data: dict, key: str, origin: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    if name not in _DTYPES:
        raise RecipeError(f"{origin}: {key}: {value!r} is not supported "
                          "(float32, float16 or bfloat16)")
    return _DTYPES[name]


def _precision(spec: MergeMethod, compute: str, stored: str, where: str, match: bool,
               unset: bool) -> str | None:
    """The compute_dtype that reproduces mergekit, when asked to; otherwise say how ours
    differs. `unset`: no `dtype` key, mergekit computes in the sources' own 16-bit dtype."""
    method = spec.name
    if match:
        if spec.precision_refusal:
            raise RecipeError(f"{where}: --match-mergekit-precision: {spec.precision_refusal}, "
                              "so its precision cannot be matched")
        return compute
    if spec.stochastic or (unset and spec.mergekit_16bit_inputs_only):
        return None  # DARE is warned about already; 16-bit inputs to float32 arithmetic agree
    if spec.mergekit_16bit_inputs_only:
        what = f"rounds every input to {compute} before its (float32) {method} arithmetic"
    else:
        what = (f"runs every step of {method} in {compute}, so even which entries survive "
                "the trim can change")
    cause = (f"the sources are {compute}, so" if unset else f"{compute}:")
    log.warning("%s: %s mergekit %s; evomerge merges in float32 and stores %s, so the weights "
                "differ. Pass --match-mergekit-precision to merge as mergekit does.",
                where, cause, what, stored)
    return None


def recipe_from_mergekit(data: dict, origin: str = "<mergekit>", match_precision: bool = False,
                         source_dtype: Callable[[str], str | None] | None = None) -> Recipe:
    """A Recipe giving the weights mergekit 0.1.5 gives for this config, or a RecipeError
    naming the key evomerge cannot honour. `source_dtype(ref)` (the dtype a model's config
    declares) tells when mergekit, given no `dtype`, would merge 16-bit sources in 16 bits."""
    mergekit_method = data.get("merge_method")
    if mergekit_method == _STACK:
        return _route_from_mergekit(data, origin, source_dtype)
    spec = by_mergekit_name(mergekit_method)
    if spec is None:
        supported = [m.mergekit_name for m in registered() if m.mergekit_name is not None]
        raise RecipeError(f"{origin}: merge_method: {mergekit_method!r} is not supported "
                          f"(supported: {supported})")
    method = spec.name
    _warn_unknown(data, _TOP_KEYS, origin)
    if data.get("modules") is not None:
        raise RecipeError(f"{origin}: modules: per-module merges are not supported")
    base = data.get("base_model")
    base = _model_name(base, f"{origin}: base_model") if base is not None else None
    compute, stored = _dtype(data, "dtype", origin), _dtype(data, "out_dtype", origin)
    out: dict[str, Any] = {
        "method": method,
        # linear: the base is one more input
        "base": None if spec.mergekit_base_is_input else base,
        "parameters": _params(data.get("parameters"), f"{origin}: parameters", spec),
        "dtype": stored or compute,
        "chat_template": data.get("chat_template"),
        "tokenizer_source": _tokenizer_source(data, origin),
    }
    if spec.mergekit_note:
        log.warning("%s: merge_method: %s: %s", origin, method, spec.mergekit_note)
    if "models" in data and "slices" in data:
        raise RecipeError(f"{origin}: give either models: or slices:, not both")
    if data.get("models"):
        sources = []
        names = []
        for i, m in enumerate(data["models"]):
            where = f"{origin}: models[{i}]"
            if isinstance(m, dict):
                _warn_unknown(m, {"model", "parameters"}, where)
            name = _model_name(m, where)
            names.append(name)
            if name == base and not spec.mergekit_base_is_input:
                continue  # mergekit adds the base itself; its parameters are unused
            params = _params(m.get("parameters") if isinstance(m, dict) else None,
                             f"{where}.parameters", spec)
            sources.append({"model": name, "parameters": params})
        if spec.mergekit_base_is_input and base is not None and base not in names:
            sources.append({"model": base})  # mergekit merges it too, at the global weight
        out["sources"] = sources
    elif data.get("slices"):
        out.update(_from_slices(data["slices"], base, origin, spec))
    else:
        raise RecipeError(f"{origin}: needs models: or slices:")
    if spec.mergekit_requires_base and base is None:
        raise RecipeError(f"{origin}: base_model: {method} needs a base model in mergekit "
                          "configs")
    first = base or next((s["model"] for s in out["sources"]), None)
    native = source_dtype(first) if source_dtype is not None and first else None
    if compute in ("float16", "bfloat16"):
        if match_precision or not spec.mergekit_16bit_inputs_only or native != compute:
            out["compute_dtype"] = _precision(spec, compute, out["dtype"], f"{origin}: dtype",
                                              match_precision, False)
        # else: linear / SLERP arithmetic is float32 in both, from the same 16-bit inputs
    elif compute is None and native in ("float16", "bfloat16"):
        out["compute_dtype"] = _precision(spec, native, stored or native,
                                          f"{origin}: dtype (not set)", match_precision, True)
    return Recipe.from_dict({k: v for k, v in out.items() if v is not None}, origin)


def _route_from_mergekit(data: dict, origin: str,
                         source_dtype: Callable[[str], str | None] | None = None) -> Recipe:
    """A passthrough layer stack (`slices:` of one model's `layer_range` each) as a route:
    mergekit takes the embeddings from the first slice's model and the final norm and head
    from the last's, which is what `embed_source` / `head_source` say. Its `scale` settings
    (source > slice > top level, gradients over each slice's layers) become each hop's
    `tensor_scale`, resolved for that hop."""
    _warn_unknown(data, _TOP_KEYS, origin)
    for key in ("models", "modules", "base_model"):
        if data.get(key) is not None:
            raise RecipeError(f"{origin}: {key}: not supported with merge_method passthrough "
                              "(evomerge reads passthrough layer stacks given as slices:)")
    slices = data.get("slices")
    if not isinstance(slices, list) or not slices:
        raise RecipeError(f"{origin}: slices: a passthrough layer stack needs a non-empty list")
    top = (_scale_setting(data.get("parameters"), f"{origin}: parameters"),
           f"{origin}: parameters.scale")
    models: list[str] = []
    hops = []
    for i, sl in enumerate(slices):
        where = f"{origin}: slices[{i}]"
        srcs = sl.get("sources") if isinstance(sl, dict) else None
        if not isinstance(srcs, list) or len(srcs) != 1:
            raise RecipeError(f"{where}.sources: a passthrough slice copies exactly one model's "
                              f"layers (got {len(srcs) if isinstance(srcs, list) else srcs!r})")
        _warn_unknown(sl, {"sources", "parameters"}, where)
        src = srcs[0]
        if isinstance(src, dict):
            _warn_unknown(src, {"model", "layer_range", "parameters"}, f"{where}.sources[0]")
        name = _model_name(src, f"{where}.sources[0]")
        lr = src.get("layer_range") if isinstance(src, dict) else None
        if (not isinstance(lr, list) or len(lr) != 2 or not all(isinstance(x, int) for x in lr)
                or not 0 <= lr[0] < lr[1]):
            raise RecipeError(f"{where}.sources[0].layer_range: expected [start, end) with "
                              f"0 <= start < end, got {lr!r}")
        scopes = [(_scale_setting(src.get("parameters") if isinstance(src, dict) else None,
                                  f"{where}.sources[0].parameters"),
                   f"{where}.sources[0].parameters.scale"),
                  (_scale_setting(sl.get("parameters"), f"{where}.parameters"),
                   f"{where}.parameters.scale"), top]
        _check_ends(scopes, (_FIRST_SLICE_TENSORS if i == 0 else ()) +
                    (_LAST_SLICE_TENSORS if i == len(slices) - 1 else ()))
        if name not in models:
            models.append(name)
        n = lr[1] - lr[0]
        for idx, layer in enumerate(range(*lr)):
            chain = [e for e, _ in _resolve_scale(scopes, idx / (n - 1) if n > 1 else 1.0)]
            hops.append({"source": models.index(name), "layer": layer,
                         "tensor_scale": [e.model_dump(exclude_none=True) for e in chain]})
    head = hops[-1]["source"]
    out: dict[str, Any] = {
        "method": ROUTE_METHOD,
        "sources": [{"model": m} for m in models],
        "route": hops,
        "head_source": head or None,
        "dtype": _dtype(data, "out_dtype", origin) or _dtype(data, "dtype", origin),
        "chat_template": data.get("chat_template"),
        "tokenizer_source": _tokenizer_source(data, origin),
    }
    recipe = Recipe.from_dict({k: v for k, v in out.items() if v is not None}, origin)
    if any(e.value != 1.0 for h in recipe.route or [] for e in h.tensor_scale or []):
        _warn_scale_precision(data, origin, source_dtype(models[0]) if source_dtype else None)
    return recipe


def _scale_setting(raw: Any, where: str) -> list[_Condition]:
    """The `scale` of a passthrough `parameters:` mapping as mergekit's ordered conditions (a
    number or a gradient is one condition for every tensor). Passthrough reads nothing else:
    other keys are named and ignored, as mergekit ignores them."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: parameters must be a mapping")
    for key in raw:
        if key != "scale":
            log.warning("%s.%s: not used by passthrough, ignored (as mergekit does)", where, key)
    if "scale" not in raw:
        return []
    setting, where = raw["scale"], f"{where}.scale"
    if setting == []:
        return []  # mergekit: no value here, the next level's applies
    if isinstance(setting, dict):
        setting = [setting]
    if not (isinstance(setting, list) and any(isinstance(c, dict) for c in setting)):
        return [(None, _scale_value(setting, where))]
    conditions: list[_Condition] = []
    for i, cond in enumerate(setting):
        at = f"{where}[{i}]"
        if not isinstance(cond, dict) or "value" not in cond or set(cond) - {"filter", "value"}:
            raise RecipeError(f"{at}: expected {{filter: ..., value: ...}}, got {cond!r}")
        f = cond.get("filter")
        if f is not None and not isinstance(f, str):
            raise RecipeError(f"{at}.filter: expected a substring of tensor names, got {f!r}")
        if cond["value"] == []:
            raise RecipeError(f"{at}.value: an empty gradient (which makes mergekit skip to the "
                              "next level for the tensors it matches) is not supported")
        conditions.append((None if f in (None, "", "*") else f,
                           _scale_value(cond["value"], f"{at}.value")))
    return conditions


def _scale_value(value: Any, where: str) -> float | list[float]:
    """A number or a gradient (a list of numbers), as mergekit validates a float: YAML reads
    1e-3 as a string, which mergekit takes as a number."""
    if isinstance(value, list) and value:
        return [_scale_number(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _scale_number(value, where)


def _scale_number(value: Any, where: str) -> float:
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise RecipeError(f"{where}: expected a finite number, a gradient (list of numbers) or "
                          f"{{filter, value}} conditions, got {value!r}")
    return number


def _at(value: float | list[float], t: float) -> float:
    """A number, or a gradient at t."""
    return gradient_at(value, t) if isinstance(value, list) else value


def _resolve_scale(scopes: list[tuple[list[_Condition], str]], t: float
                   ) -> list[tuple[TensorScale, str]]:
    """The conditions of every level in mergekit's precedence, evaluated at t, as one list
    whose first match decides (a level matching nothing leaves the tensor to the next), each
    with where it was written; what follows an unfiltered condition never applies."""
    chain = []
    for conditions, where in scopes:
        for f, value in conditions:
            chain.append((TensorScale(filter=f, value=_at(value, t)), where))
            if f is None:
                return chain
    return chain


def _check_ends(scopes: list[tuple[list[_Condition], str]], names: tuple[str, ...]) -> None:
    """mergekit scales the embeddings by the first slice's `scale` and the final norm and the
    head by the last's (at t = 0); a route copies them as they are, so only 1 is accepted."""
    chain = _resolve_scale(scopes, 0.0)
    for name in names:
        entry = matching_scale([e for e, _ in chain], name)
        if entry is None or entry.value == 1.0:
            continue
        where = next(at for e, at in chain if e is entry)
        how = f"filter {entry.filter!r}" if entry.filter else "no filter"
        raise RecipeError(f"{where}: mergekit would multiply {name} by {entry.value:g} too "
                          f"({how}); evomerge routes copy the embeddings, final norm and head "
                          f"unscaled: give it 1 (e.g. {{filter: {name}, value: 1}} first)")


def _warn_scale_precision(data: dict, origin: str, native: str | None) -> None:
    """evomerge multiplies in the dtype it stores; mergekit in its `dtype` (else the sources'),
    then casts to `out_dtype`: the same numbers unless the two differ."""
    compute = _dtype(data, "dtype", origin) or native
    stored = _dtype(data, "out_dtype", origin)
    if compute and stored and compute != stored:
        log.warning("%s: out_dtype: mergekit multiplies the scaled tensors in %s and stores "
                    "%s; evomerge multiplies them in %s, so those may differ in the last bit",
                    origin, compute, stored, stored)


def _route_to_mergekit(recipe: Recipe, source_dtype: str | None) -> dict[str, Any]:
    """A route without input scales as a passthrough layer stack: runs of consecutive layers
    of one model with the same tensor scales become one slice, its `scale` the hops'."""
    route = recipe.route or []
    for k, hop in enumerate(route):
        if hop.scale != 1.0:
            raise RecipeError(f"route[{k}].scale: {hop.scale:g}; mergekit's passthrough has no "
                              "input scale per hop (only routes with every scale 1 export)")
    embed, head = recipe.route_ends
    if (route[0].source, route[-1].source) != (embed, head):
        raise RecipeError("route: mergekit takes the embeddings from the first slice's model "
                          "and the head from the last's; this route's differ")
    runs: list[list[RouteHop]] = []
    for hop in route:
        last = runs[-1][-1] if runs else None
        if (last and recipe.sources[last.source].model == recipe.sources[hop.source].model
                and (last.layer + 1, last.tensor_scale) == (hop.layer, hop.tensor_scale)):
            runs[-1].append(hop)
        else:
            runs.append([hop])
    slices: list[dict[str, Any]] = []
    for i, run in enumerate(runs):
        source: dict[str, Any] = {"model": recipe.sources[run[0].source].model,
                                  "layer_range": [run[0].layer, run[-1].layer + 1]}
        pinned = ((_FIRST_SLICE_TENSORS if i == 0 else ()) +
                  (_LAST_SLICE_TENSORS if i == len(runs) - 1 else ()))
        scale = _scale_to_mergekit(run[0].tensor_scale, pinned)
        if scale is not None:
            source["parameters"] = {"scale": scale}
        slices.append({"sources": [source]})
    out: dict[str, Any] = {"merge_method": _STACK, "slices": slices}
    dtype = recipe.dtype or source_dtype
    if dtype:
        out["dtype"] = dtype
    return _with_tokenizer(recipe, out)


def _scale_to_mergekit(entries: list[TensorScale] | None, pinned: tuple[str, ...]) -> Any:
    """A hop's `tensor_scale` as mergekit's `scale`. mergekit applies it to the `pinned`
    tensors too (the embeddings, final norm, head), which the hop's never touches: those it
    would scale get a `value: 1` condition first."""
    conditions: list[dict[str, Any]] = [
        {"filter": name, "value": 1.0} for name in pinned
        if (e := matching_scale(entries, name)) is not None and e.value != 1.0]
    conditions += [e.model_dump(exclude_none=True) for e in entries or []]
    if len(conditions) == 1 and "filter" not in conditions[0]:
        return conditions[0]["value"]
    return conditions or None


def _with_tokenizer(recipe: Recipe, out: dict[str, Any]) -> dict[str, Any]:
    if recipe.tokenizer_source:
        out["tokenizer_source"] = recipe.tokenizer_source
    if recipe.chat_template:
        out["chat_template"] = recipe.chat_template
    return out


def _tokenizer_source(data: dict, origin: str) -> str | None:
    """mergekit's `tokenizer_source:` or `tokenizer: {source: ...}` (whose default is union);
    per-token embedding settings and vocabulary padding resize embeddings: refused."""
    flat, block = data.get("tokenizer_source"), data.get("tokenizer")
    if flat is not None and block is not None:
        raise RecipeError(f"{origin}: give either tokenizer_source: or tokenizer:, not both")
    if block is None:
        return None if flat is None else _tokenizer_ref(flat, f"{origin}: tokenizer_source")
    if not isinstance(block, dict):
        raise RecipeError(f"{origin}: tokenizer: expected a mapping")
    _warn_unknown(block, {"source", "tokens", "pad_to_multiple_of"}, f"{origin}: tokenizer")
    for key in ("tokens", "pad_to_multiple_of"):
        if block.get(key):
            raise RecipeError(f"{origin}: tokenizer.{key}: not supported (it changes the "
                              "embedding rows, which evomerge leaves as they are)")
    return _tokenizer_ref(block.get("source", "union"), f"{origin}: tokenizer.source")


def _tokenizer_ref(value: Any, where: str) -> str:
    return value if value in TOKENIZER_KEYWORDS else _model_name(value, where)


def _from_slices(slices: Any, base: str | None, origin: str, spec: MergeMethod
                 ) -> dict[str, Any]:
    if not isinstance(slices, list) or not slices:
        raise RecipeError(f"{origin}: slices: expected a non-empty list")
    if spec.mergekit_base_is_input:
        raise RecipeError(f"{origin}: slices: {spec.name} merges are read in the models: form "
                          "only")
    order: list[str] | None = None
    rec_slices = []
    end = 0
    for i, sl in enumerate(slices):
        where = f"{origin}: slices[{i}]"
        srcs = sl.get("sources") if isinstance(sl, dict) else None
        if not srcs:
            raise RecipeError(f"{where}.sources: missing")
        _warn_unknown(sl, {"sources", "base_model", "residual_weight", "parameters"}, where)
        if sl.get("residual_weight") is not None:
            raise RecipeError(f"{where}.residual_weight: not supported")
        if sl.get("base_model") is not None and _model_name(sl["base_model"],
                                                            f"{where}.base_model") != base:
            raise RecipeError(f"{where}.base_model: a per-slice base model is not supported")
        for j, s in enumerate(srcs):
            if isinstance(s, dict):
                _warn_unknown(s, {"model", "layer_range", "parameters"}, f"{where}.sources[{j}]")
        ranges = {tuple(s.get("layer_range", ())) for s in srcs}
        if len(ranges) != 1:
            raise RecipeError(
                f"{where}.sources: layer_range differs between models ({sorted(ranges)}); "
                "layer stacking is a data-flow route: write it as merge_method: passthrough"
            )
        (lr,) = ranges
        if len(lr) != 2 or lr[0] != end:
            raise RecipeError(
                f"{where}: layer_range {list(lr)} must continue at layer {end} "
                "(slices must tile the layers in order)"
            )
        end = lr[1]
        names = [_model_name(s, f"{where}.sources") for s in srcs]
        non_base = [n for n in names if n != base]
        if order is None:
            order = non_base
        elif non_base != order:
            raise RecipeError(f"{where}.sources: slices must list the same models in order")
        per_source = []
        for s, n in zip(srcs, names, strict=True):
            if n != base:
                per_source.append(_params(s.get("parameters"), f"{where}.parameters", spec))
        rec_slices.append({"layers": list(lr),
                           "parameters": _params(sl.get("parameters"), f"{where}.parameters",
                                                 spec),
                           "source_parameters": per_source})
    assert order is not None
    return {"sources": [{"model": n} for n in order], "slices": rec_slices}


def _to_mergekit_value(value: Any, num_layers: int | None, where: str,
                       filters: dict[str, tuple[str, ...]]) -> Any:
    """Our value forms in mergekit's: groups become per-layer filters, kinds become the
    substrings `filters` gives (one condition each; see architecture.mergekit_filters)."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, list):
        if all(isinstance(v, (int, float)) for v in value):
            return list(value)
        conds = []
        for c in value:
            f = c.get("filter")
            if f == "other":
                raise RecipeError(f"{where}: tensor kind 'other' has no mergekit filter")
            if f is not None and f.startswith(NAME_FILTER_PREFIX):
                subs: tuple[str | None, ...] = (f[len(NAME_FILTER_PREFIX):],)
            else:
                subs = (None,) if f is None else filters.get(f, (f,))
            for sub in subs:  # each its own copy of the value: no YAML anchors in the output
                cond = {"value": _to_mergekit_value(c["value"], num_layers, where, filters)}
                conds.append(cond if sub is None else {"filter": sub, **cond})
        return conds
    if isinstance(value, dict) and set(value) == {"groups"}:
        if num_layers is None:
            raise RecipeError(f"{where}: layer groups need the layer count to export; pass a "
                              "recipe whose base or first source has a config.json")
        groups = value["groups"]
        conds = []
        for layer in range(num_layers):
            g = groups[min(len(groups) - 1, layer * len(groups) // num_layers)]
            conds.append({"filter": f"layers.{layer}.", "value": g})
        conds += [{"filter": sub, "value": groups[0]} for sub in filters["embed"]]
        conds.append({"value": groups[-1]})
        return conds
    if isinstance(value, dict):
        conds = []
        for kind in MERGEKIT_KIND_ORDER:
            if kind in value:
                conds += [{"filter": sub,
                           "value": _to_mergekit_value(value[kind], num_layers, where, filters)}
                          for sub in filters[kind]]
        if "other" in value:
            raise RecipeError(f"{where}: tensor kind 'other' has no mergekit filter")
        if "default" in value:
            conds.append({"value": _to_mergekit_value(value["default"], num_layers, where,
                                                      filters)})
        return conds
    raise RecipeError(f"{where}: cannot export value {value!r}")


def recipe_to_mergekit(recipe: Recipe, num_layers: int | None = None,
                       source_dtype: str | None = None,
                       architecture: str | None = None) -> dict[str, Any]:
    """A mergekit config for a parameter-space recipe, precision included: mergekit computes
    in its `dtype`, so ours (float32 unless `compute_dtype` says otherwise) goes there and the
    stored dtype (the recipe's, else the sources' `source_dtype`) in `out_dtype`. Tensor
    kinds become the filters that pick them in a model of `architecture` (config.json's)."""
    if recipe.route is not None:
        return _route_to_mergekit(recipe, source_dtype)
    spec = recipe.method_spec
    assert spec is not None  # a recipe without a route merges with a registered method
    if spec.mergekit_name is None:
        raise RecipeError(f"method: mergekit has no {spec.name} merge")
    if spec.mergekit_base_is_input and recipe.base:
        recipe = recipe.model_copy(update={"base": None})  # our linear leaves the base out
    filters = mergekit_filters(architecture)

    def conv(params: dict[str, Any], where: str) -> dict[str, Any]:
        return {k: _to_mergekit_value(v, num_layers, f"{where}.{k}", filters)
                for k, v in params.items()}

    out: dict[str, Any] = {"merge_method": spec.mergekit_name}
    if recipe.base:
        out["base_model"] = recipe.base
    if recipe.parameters:
        out["parameters"] = conv(recipe.parameters, "parameters")
    if recipe.slices:
        slices = []
        for i, sl in enumerate(recipe.slices):
            srcs = []
            for j, s in enumerate(recipe.sources):
                entry: dict[str, Any] = {"model": s.model, "layer_range": list(sl.layers)}
                # our order: slice-source > slice > source > global; mergekit has no
                # per-model level in slices, so source settings the slice overrides are dropped
                params = {k: v for k, v in s.parameters.items() if k not in sl.parameters}
                if j < len(sl.source_parameters):
                    params.update(sl.source_parameters[j])
                if params:
                    entry["parameters"] = conv(params, f"slices[{i}].sources[{j}].parameters")
                srcs.append(entry)
            if recipe.base:
                srcs.append({"model": recipe.base, "layer_range": list(sl.layers)})
            item: dict[str, Any] = {"sources": srcs}
            if sl.parameters:
                item["parameters"] = conv(sl.parameters, f"slices[{i}].parameters")
            slices.append(item)
        out["slices"] = slices
    else:
        models = []
        for j, s in enumerate(recipe.sources):
            entry = {"model": s.model}
            if s.parameters:
                entry["parameters"] = conv(s.parameters, f"sources[{j}].parameters")
            models.append(entry)
        out["models"] = models
    out["dtype"] = recipe.compute_dtype or "float32"
    stored = recipe.dtype or source_dtype
    if stored and stored != out["dtype"]:
        out["out_dtype"] = stored
    return _with_tokenizer(recipe, out)


def model_config(recipe: Recipe) -> dict[str, Any]:
    """config.json of the first model of the recipe found on this machine ({} if none), for
    what the recipe does not say: the layer count, the architecture, the sources' dtype."""
    for ref in recipe.model_refs():
        try:
            cfg = resolve_model_ref(ref) / "config.json"
            if cfg.exists():
                return json.loads(cfg.read_text())
        except (SourceError, OSError, ValueError):
            continue
    return {}


def config_dtype(config: dict[str, Any]) -> str | None:
    """The dtype a config.json declares, in our names; None when it names none we know."""
    name = config.get("dtype") or config.get("torch_dtype")
    return _DTYPES.get(str(name).removeprefix("torch.")) if name else None


def portable_mergekit(recipe: Recipe, relative_to: Path | None = None) -> dict[str, Any]:
    """The recipe as a mergekit config with portable model references (`Recipe.portable`);
    the layer count, the architecture and the sources' dtype come from the models'
    config.json."""
    cfg = model_config(recipe)
    layers = cfg.get("num_hidden_layers")
    archs = cfg.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    return recipe_to_mergekit(recipe.portable(relative_to),
                              layers if isinstance(layers, int) else None, config_dtype(cfg),
                              architecture=arch)


def mergekit_text(recipe: Recipe, relative_to: Path | None = None) -> str:
    """`portable_mergekit` as YAML (`export-recipe`, `mergekit_config.yml` in exports)."""
    return yaml.safe_dump(portable_mergekit(recipe, relative_to), sort_keys=False)
