"""`merge_to_directory`: a recipe becomes a model directory (`evomerge merge`, `export`).

It refuses what must not be written before reading a byte, then hands the recipe to one of
two sibling writers: a layer route to `route_export.write_route`, every other recipe to the
streaming parameter merge `streaming.write_parameter_merge`. Each writes the weights, the
metadata and the tokenizer into a temporary sibling renamed into place when complete.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch

from evomerge.merge.errors import MergeError
from evomerge.merge.options import MergeOptions, MergeSummary
from evomerge.merge.route_export import write_route
from evomerge.merge.streaming import write_parameter_merge
from evomerge.recipe import Recipe

# what a merge (or `save_pretrained`) writes into a model directory
MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json",
               "generation_config.json", "tokenizer*", "special_tokens_map.json", "vocab*",
               "merges.txt", "added_tokens.json", "chat_template.jinja", "*.model",
               "README.md", "evomerge_recipe.yaml", "mergekit_config.yml")


def merge_to_directory(recipe: Recipe, out_dir: str | Path, options: MergeOptions | None = None
                       ) -> MergeSummary:
    """Write the model `recipe` describes to `out_dir` (a route is exported, anything else
    merged parameter by parameter)."""
    options = options or MergeOptions()
    out_dir = Path(out_dir)
    check_output(recipe, out_dir, options)
    if recipe.route is not None:
        return write_route(recipe, out_dir, options)
    return write_parameter_merge(recipe, out_dir, options)


def check_output(recipe: Recipe, out_dir: Path, options: MergeOptions) -> None:
    """Refuse before reading anything: an existing output without --overwrite (or one that
    --overwrite must not replace), a CUDA device that is not there."""
    if out_dir.exists() and not options.overwrite:
        raise MergeError(f"{out_dir}: output directory exists (pass --overwrite to replace it)")
    if out_dir.exists():
        check_replaceable(out_dir, [m for m in (recipe.base, *(s.model for s in
                                                               recipe.sources)) if m])
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise MergeError(f"device: {options.device} requested but CUDA is not available")


def check_replaceable(out_dir: Path, inputs: list[str] | None = None) -> None:
    """--overwrite replaces a model directory, never anything else: not a file, not the
    current directory or one above it, not an input model, not a folder holding files a merge
    does not write (a project, a run directory)."""
    target = out_dir.resolve()
    if not out_dir.is_dir():
        raise MergeError(f"{out_dir}: exists and is not a directory; --overwrite replaces only "
                         "a model directory")
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise MergeError(f"{out_dir}: is the current directory or contains it; choose a new "
                         "output directory")
    for ref in inputs or []:
        p = Path(ref).expanduser()
        if p.exists() and (p.resolve() == target or target in p.resolve().parents):
            raise MergeError(f"{out_dir}: holds the input model {ref}; --overwrite would "
                             "delete it")
    foreign = sorted(x.name for x in out_dir.iterdir()
                     if not (x.is_file() and any(fnmatch.fnmatch(x.name, pat)
                                                 for pat in MODEL_FILES)))
    if foreign:
        raise MergeError(f"{out_dir}: holds {foreign[0]!r}"
                         f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, "
                         "which a merge does not write; --overwrite replaces only a model "
                         "directory: choose another path or remove it yourself")
