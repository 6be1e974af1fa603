"""Writing a merged model directory around its tensors: the shard layout and names, the
progress bar, and the metadata (index, config, recipe, model card) both writers share."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from evomerge.merge.options import MergeOptions
from evomerge.merge.tensors import DTYPE_NAMES, numel
from evomerge.models.refs import hub_pin, portable_ref, split_revision
from evomerge.models.source import SourceModel
from evomerge.recipe import Recipe

# one output tensor as planned before any data is read: (name, dtype, shape)
PlannedTensor = tuple[str, torch.dtype, tuple[int, ...]]


def plan_shards(items: list[PlannedTensor], shard_size: int) -> list[list[PlannedTensor]]:
    """Cut the tensors, in their order, into shards of at most `shard_size` bytes (a bigger
    tensor gets a shard of its own)."""
    shards: list[list] = [[]]
    size = 0
    for item in items:
        n = torch.empty((), dtype=item[1]).element_size()
        for d in item[2]:
            n *= d
        if shards[-1] and size + n > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += n
    return shards


def shard_names(n: int) -> list[str]:
    """The file names transformers expects for `n` shards."""
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def progress_bar(total: int, enabled: bool) -> tqdm:
    """A bar counting written tensors (silent unless `enabled`)."""
    return tqdm(total=total, unit="tensor", desc="merging", disable=not enabled)


def write_metadata(recipe: Recipe, ref: SourceModel, shards: list[list[PlannedTensor]],
                   tmp: Path, out_dtype: torch.dtype | None, options: MergeOptions,
                   out_dir: Path, config: dict | None = None) -> None:
    """Index, config (`config`, else the first model's), recipe and model card; written
    references are portable ones."""
    names = shard_names(len(shards))
    if len(shards) > 1:
        weight_map = {item[0]: fname for fname, shard in zip(names, shards, strict=True)
                      for item in shard}
        total = sum(numel(i[2]) * torch.empty((), dtype=i[1]).element_size()
                    for s in shards for i in s)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = dict(config if config is not None else ref.config)
    if config:
        if out_dtype is not None:
            dname = DTYPE_NAMES[out_dtype]
            keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["dtype"]
            for k in keys:
                config[k] = dname
        config["evomerge_recipe_digest"] = recipe.digest()
        if Path(str(config.get("_name_or_path", ""))).is_absolute():
            config["_name_or_path"] = ""  # a path of the machine that saved the source
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "evomerge_recipe.yaml").write_text(recipe.portable(out_dir).to_yaml())
    (tmp / "README.md").write_text(model_card(recipe, out_dir))
    for name, text in (options.extra_files or {}).items():
        (tmp / name).write_text(text)


def model_card(recipe: Recipe, out_dir: Path | None = None) -> str:
    """README.md of a merged model. Sources appear as the recipe file named them (hub ids
    with the cached revision they were read from); the recipe itself with local paths
    relative to `out_dir`, so nothing names a folder of the machine that merged."""

    def describe(ref: str) -> str:
        written = recipe.written_ref(ref)
        if written is None or Path(written).expanduser().is_absolute():
            written = portable_ref(ref, None, out_dir)
        pin = hub_pin(ref)
        if pin is None:
            return f"`{written}`"
        repo, revision = split_revision(pin)
        return f"`{written}` (Hugging Face hub `{repo}`, revision `{revision}`)"

    sources = "\n".join(f"- {describe(s.model)}" for s in recipe.sources)
    base = describe(recipe.base) if recipe.base else "none"
    where = " (local paths relative to this directory)" if out_dir is not None else ""
    how = f"Built by evomerge with method `{recipe.method}`.\n\nBase model: {base}"
    if recipe.route is not None:
        embed, head = recipe.route_ends
        rows = "\n".join(f"| {k} | {h.source} | {h.layer} | {h.scale:.6g} |"
                         for k, h in enumerate(recipe.route))
        how = (f"Built by evomerge as a layer route (data-flow merge): {len(recipe.route)} "
               f"decoder layers, each copied from a source; embeddings from source {embed}, "
               f"final norm and head from source {head}. Each hop's input scale is folded "
               "into the weights (`evomerge_route` in config.json keeps the route).\n\n"
               f"| hop | source | layer | input scale |\n|---|---|---|---|\n{rows}")
    return (
        "---\nlibrary_name: transformers\ntags:\n- merge\n- evomerge\n---\n"
        f"# Merged model\n\n{how}\n\n"
        f"Sources (numbered from 0):\n{sources}\n\n"
        f"Recipe digest: `{recipe.digest()}`\n\n## Recipe{where}\n\n"
        f"```yaml\n{recipe.portable(out_dir).to_yaml()}```\n"
    )
