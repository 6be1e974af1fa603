"""Opening a recipe's models and checking that they can be merged tensor by tensor."""

from __future__ import annotations

from evomerge.merge.errors import MergeError
from evomerge.merge.options import MergeOptions
from evomerge.models.lora import open_source
from evomerge.models.source import SourceError, SourceModel
from evomerge.recipe import Recipe


def open_models(recipe: Recipe, options: MergeOptions) -> tuple[SourceModel | None,
                                                                 list[SourceModel]]:
    """The recipe's base (or None) and sources, opened; an error names the recipe field and
    closes whatever was already opened."""
    opened: list[SourceModel] = []
    where = "base"
    try:
        base = None
        if recipe.base:
            base = open_source(recipe.base, options.allow_pickle, options.allow_download)
            opened.append(base)
        sources = []
        for i, s in enumerate(recipe.sources):
            where = f"sources[{i}].model"
            sources.append(open_source(s.model, options.allow_pickle,
                                       options.allow_download))
            opened.append(sources[-1])
    except SourceError as exc:
        for m in opened:
            m.close()
        raise MergeError(f"{where}: {exc}") from None
    return base, sources


def check_compatible(models: list[SourceModel]) -> None:
    """Same architecture, same tensor names and shapes; errors name both files."""
    ref = models[0]
    for other in models[1:]:
        if ref.architecture and other.architecture and ref.architecture != other.architecture:
            raise MergeError(
                f"{other.path}: architecture {other.architecture} differs from "
                f"{ref.architecture} of {ref.path}"
            )
        for name, entry in ref.entries.items():
            o = other.entries.get(name)
            if o is None:
                raise MergeError(f"{other.path}: missing tensor {name} (present in {ref.path})")
            if o.shape != entry.shape:
                raise MergeError(
                    f"{other.path}: tensor {name} has shape {list(o.shape)}, but "
                    f"{list(entry.shape)} in {ref.path}"
                )
        extra = sorted(set(other.entries) - set(ref.entries))
        if extra:
            raise MergeError(f"{other.path}: unexpected tensor {extra[0]} (absent from {ref.path})")
