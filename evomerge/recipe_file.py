"""Reading a recipe file: our own YAML or a mergekit config (docs/design.md §3).

This sits above both formats (evomerge.recipe and evomerge.mergekit_yaml), so neither needs
the other to load a file. Local model paths are resolved against the current directory, else
the recipe's folder; how the file wrote each reference is kept for outputs (`Recipe.portable`).
Torch-free, like the formats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from evomerge.mergekit_yaml import config_dtype, recipe_from_mergekit
from evomerge.models.refs import (
    SourceError,
    join_adapter,
    missing_local,
    resolve_model_ref,
    split_adapter,
)
from evomerge.recipe import TOKENIZER_KEYWORDS, Recipe, RecipeError


def is_mergekit_config(data: Any) -> bool:
    """mergekit configs name `merge_method`; ours name `method`."""
    return isinstance(data, dict) and "merge_method" in data


def load_recipe(path: str | Path, match_mergekit_precision: bool = False) -> Recipe:
    """Read a recipe file: our own format or a mergekit YAML config (detected by its keys).

    Local paths are resolved (see `_relative_to`); how the file wrote each reference is kept
    for outputs (`Recipe.portable`). `match_mergekit_precision`: a mergekit config whose
    `dtype` is below float32 is merged at that precision, as mergekit does."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict) and "method" not in data and {"controller", "task"} & set(data):
        raise RecipeError(f"{path}: this is a search config, not a merge recipe; run it with "
                          f"`evomerge search {path} --run-dir DIR`")
    if is_mergekit_config(data):
        recipe = recipe_from_mergekit(data, origin=str(path),
                                      match_precision=match_mergekit_precision,
                                      source_dtype=lambda ref: _declared_dtype(path, ref))
    else:
        if match_mergekit_precision:
            raise RecipeError(f"{path}: --match-mergekit-precision applies to mergekit configs; "
                              "an evomerge recipe says `compute_dtype:` instead")
        recipe = Recipe.from_dict(data, origin=str(path))
    written: dict[str, str] = {}

    def resolve(ref: str, where: str) -> str:
        base, adapter = split_adapter(ref)  # `base+adapter`: each part on its own
        parts = []
        for part, at in ((base, where), (adapter, f"{where} (its adapter)")):
            if part is None:
                continue
            problem = missing_local(part, at, [Path.cwd(), path.parent])
            if problem:
                raise RecipeError(f"{path}: {problem}")
            parts.append(_relative_to(path, part))
        resolved = join_adapter(*parts) if adapter is not None else parts[0]
        written[resolved] = ref
        return resolved

    tok = recipe.tokenizer_source
    out = recipe.model_copy(
        update={
            "sources": [s.model_copy(update={"model": resolve(s.model, f"sources[{i}].model")})
                        for i, s in enumerate(recipe.sources)],
            "base": resolve(recipe.base, "base") if recipe.base else None,
            "tokenizer_source": resolve(tok, "tokenizer_source")
            if tok and tok not in TOKENIZER_KEYWORDS else tok,
        }
    )
    return out.with_written_refs(written)


def _declared_dtype(recipe_path: Path, ref: str) -> str | None:
    """The dtype a model's config.json declares (no download), None when unknown."""
    try:
        cfg = resolve_model_ref(_relative_to(recipe_path, ref)) / "config.json"
        return config_dtype(json.loads(cfg.read_text()))
    except (SourceError, OSError, ValueError):
        return None


def _relative_to(recipe_path: Path, ref: str) -> str:
    """Resolve a relative local model path against the current directory, else the recipe's
    folder; leave anything that is not an existing local path (a hub repo id) unchanged."""
    p = Path(ref).expanduser()
    if p.is_absolute() or p.exists():
        return str(p) if not p.exists() else str(p.resolve())
    candidate = recipe_path.parent / p
    if candidate.exists():
        return str(candidate.resolve())
    return ref
