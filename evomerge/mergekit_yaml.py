"""mergekit YAML ⇄ Recipe.

Users already hold mergekit configs; importing them means `evomerge merge` accepts them as is.
Both of mergekit's forms are read: `models:` (one entry per model, parameters apply to all
layers) and `slices:` (per layer range; every slice must list the same models over the same
range, since stacking different ranges is a data-flow route, not a parameter merge).
Parameter values (numbers, gradients, `{filter, value}` lists) carry over unchanged: the
Recipe evaluates them with mergekit's rules.
"""

from __future__ import annotations

import logging
from typing import Any

from evomerge.models.architecture import MERGEKIT_FILTER_FOR_KIND
from evomerge.recipe import METHODS, PER_SOURCE_PARAMS, SHARED_PARAMS, Recipe, RecipeError

log = logging.getLogger(__name__)

# mergekit parameters that have no counterpart here and do not change float32 results.
_IGNORED = {"int8_mask"}
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _model_name(ref: Any, where: str) -> str:
    if isinstance(ref, str):
        return ref
    if isinstance(ref, dict) and "model" in ref:  # {model: {path: ...}} or {model: str}
        inner = ref["model"]
        return inner["path"] if isinstance(inner, dict) else str(inner)
    raise RecipeError(f"{where}: cannot read model reference {ref!r}")


def _params(raw: Any, where: str, method: str) -> dict[str, Any]:
    """Parameters the method reads; mergekit ignores the others silently, we log them."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: parameters must be a mapping")
    used = set(PER_SOURCE_PARAMS[method]) | set(SHARED_PARAMS[method])
    out = {}
    for k, v in raw.items():
        if k in _IGNORED:
            continue
        if k == "rescale" and method in ("dare_linear", "dare_ties"):
            continue  # evomerge's DARE always rescales survivors by 1/density
        if k not in used:
            log.warning("%s.%s: not used by %s, ignored (as mergekit does)", where, k, method)
            continue
        out[k] = v
    return out


def recipe_from_mergekit(data: dict, origin: str = "<mergekit>") -> Recipe:
    method = data.get("merge_method")
    if method not in METHODS:
        raise RecipeError(
            f"{origin}: merge_method: {method!r} is not supported (supported: {list(METHODS)})"
        )
    base = data.get("base_model")
    base = _model_name(base, f"{origin}: base_model") if base is not None else None
    dtype = data.get("dtype")
    if dtype is not None and dtype not in _DTYPES:
        raise RecipeError(f"{origin}: dtype: {dtype!r} is not supported")
    out: dict[str, Any] = {
        "method": method,
        "base": base,
        "parameters": _params(data.get("parameters"), f"{origin}: parameters", method),
        "dtype": _DTYPES.get(dtype) if dtype else None,
    }
    tok = data.get("tokenizer_source")
    if isinstance(tok, str) and tok not in ("base", "union"):
        out["tokenizer_source"] = tok
    elif tok == "union":
        raise RecipeError(f"{origin}: tokenizer_source: 'union' is not supported")
    if "models" in data and "slices" in data:
        raise RecipeError(f"{origin}: give either models: or slices:, not both")
    if "models" in data:
        sources = []
        for i, m in enumerate(data["models"] or []):
            name = _model_name(m, f"{origin}: models[{i}]")
            if name == base:
                continue  # mergekit adds the base itself; its parameters are unused
            params = _params(m.get("parameters") if isinstance(m, dict) else None,
                             f"{origin}: models[{i}].parameters", method)
            sources.append({"model": name, "parameters": params})
        out["sources"] = sources
    elif "slices" in data:
        out.update(_from_slices(data["slices"], base, origin, method))
    else:
        raise RecipeError(f"{origin}: needs models: or slices:")
    if method == "slerp" and base is None:
        raise RecipeError(f"{origin}: base_model: slerp needs a base model in mergekit configs")
    return Recipe.from_dict({k: v for k, v in out.items() if v is not None}, origin)


def _from_slices(slices: Any, base: str | None, origin: str, method: str) -> dict[str, Any]:
    if not isinstance(slices, list) or not slices:
        raise RecipeError(f"{origin}: slices: expected a non-empty list")
    order: list[str] | None = None
    rec_slices = []
    end = 0
    for i, sl in enumerate(slices):
        where = f"{origin}: slices[{i}]"
        srcs = sl.get("sources") if isinstance(sl, dict) else None
        if not srcs:
            raise RecipeError(f"{where}.sources: missing")
        ranges = {tuple(s.get("layer_range", ())) for s in srcs}
        if len(ranges) != 1:
            raise RecipeError(
                f"{where}.sources: layer_range differs between models ({sorted(ranges)}); "
                "layer stacking is a data-flow route, not a parameter merge"
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
                per_source.append(_params(s.get("parameters"), f"{where}.parameters", method))
        rec_slices.append({"layers": list(lr),
                           "parameters": _params(sl.get("parameters"), f"{where}.parameters",
                                                 method),
                           "source_parameters": per_source})
    assert order is not None
    return {"sources": [{"model": n} for n in order], "slices": rec_slices}


def _to_mergekit_value(value: Any, num_layers: int | None, where: str) -> Any:
    """Our value forms in mergekit's: groups become per-layer filters, kinds become substrings."""
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
            cond = {"value": _to_mergekit_value(c["value"], num_layers, where)}
            if f is not None:
                cond = {"filter": MERGEKIT_FILTER_FOR_KIND.get(f, f), **cond}
            conds.append(cond)
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
        conds.append({"filter": "embed_tokens", "value": groups[0]})
        conds.append({"value": groups[-1]})
        return conds
    if isinstance(value, dict):
        conds = []
        for kind in ("embed", "head", "norm", "attention", "mlp"):
            if kind in value:
                conds.append({"filter": MERGEKIT_FILTER_FOR_KIND[kind],
                              "value": _to_mergekit_value(value[kind], num_layers, where)})
        if "other" in value:
            raise RecipeError(f"{where}: tensor kind 'other' has no mergekit filter")
        if "default" in value:
            conds.append({"value": _to_mergekit_value(value["default"], num_layers, where)})
        return conds
    raise RecipeError(f"{where}: cannot export value {value!r}")


def recipe_to_mergekit(recipe: Recipe, num_layers: int | None = None) -> dict[str, Any]:
    """A mergekit config for a parameter-space recipe."""
    if recipe.route is not None:
        raise RecipeError("route: layer-route recipes are not exported as parameter merges")

    def conv(params: dict[str, Any], where: str) -> dict[str, Any]:
        return {k: _to_mergekit_value(v, num_layers, f"{where}.{k}") for k, v in params.items()}

    out: dict[str, Any] = {"merge_method": recipe.method}
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
    if recipe.dtype:
        out["dtype"] = recipe.dtype
    if recipe.tokenizer_source:
        out["tokenizer_source"] = recipe.tokenizer_source
    return out
