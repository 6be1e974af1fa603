"""A layer route → a stock model directory (docs/design.md §4).

Every hop becomes one ordinary decoder layer holding a copy of its source layer's tensors,
multiplied by its tensor scales as mergekit's passthrough does (in the stored dtype, which is
mergekit's `dtype` for an imported stack) and with the hop's scale folded in (`RoutePlan.fold`),
so the directory loads with plain `AutoModelForCausalLM` and computes what the routed runtime
computed. The route itself is kept in config.json (`evomerge_route`) and in the model card.
Tensors are copied one at a time, into a temporary directory renamed into place when complete.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from evomerge.atomic import directory_atomic
from evomerge.merge.options import MergeOptions, MergeSummary
from evomerge.merge.output import (
    PlannedTensor,
    plan_shards,
    progress_bar,
    shard_names,
    write_metadata,
)
from evomerge.merge.routing import RoutePlan
from evomerge.merge.sources import open_models
from evomerge.merge.tensors import TORCH_DTYPES
from evomerge.merge.tokenizer import plan_tokenizer
from evomerge.models.architecture import tensor_kind
from evomerge.models.refs import portable_ref
from evomerge.models.safetensors_io import ShardWriter
from evomerge.models.source import SourceModel
from evomerge.recipe import Recipe

log = logging.getLogger(__name__)


def write_route(recipe: Recipe, out_dir: Path, options: MergeOptions) -> MergeSummary:
    """Export the recipe's layer route into `out_dir` as a stock model directory, with its
    metadata and tokenizer (the caller has checked that `out_dir` may be written)."""
    start = time.perf_counter()
    _, models = open_models(recipe, options)
    try:
        plan = RoutePlan(recipe, models)
        if plan.unused_filters:
            log.warning("route: tensor_scale filter(s) %s match no tensor of their hops, so "
                        "they scale nothing (mergekit ignores them too)",
                        ", ".join(map(repr, plan.unused_filters)))
        embed = plan.embed_source
        tokenizer = plan_tokenizer(recipe, None, [models[embed]] +
                                   [m for i, m in enumerate(models) if i != embed],
                                   options.allow_download)
        out_dtype = TORCH_DTYPES[recipe.dtype] if recipe.dtype else None
        # output name → (source, source tensor, layer-relative name or None, fold factor,
        # tensor scale)
        jobs: dict[str, tuple[int, str, str | None, float, float]] = {}
        for name in plan.output_tensors():
            src, src_name = plan.outer_tensor(name)
            factor = plan.embed_factor if tensor_kind(name) == "embed" else 1.0
            jobs[name] = (src, src_name, None, factor, 1.0)
        for k, hop in enumerate(plan.hops):
            for rest in plan.ref.layer_shapes:
                src, src_name = plan.layer_tensor(k, rest)
                jobs[plan.ref.name(k, rest)] = (src, src_name, rest, hop.factor,
                                                plan.tensor_multiplier(k, rest))
        items = []
        for name, (src, src_name, *_) in jobs.items():
            entry = models[src].entries[src_name]
            dt = out_dtype if out_dtype is not None else entry.dtype
            items.append((name, dt, tuple(entry.shape)))
        shards = plan_shards(items, options.shard_size)
        refs = [portable_ref(s.model, recipe.written_ref(s.model), out_dir)
                for s in recipe.sources]
        config = plan.output_config(plan.route_provenance(refs))
        with directory_atomic(out_dir) as tmp:
            written = _copy_tensors(plan, models, jobs, shards, tmp, options.progress)
            write_metadata(recipe, models[embed], shards, tmp, out_dtype, options, out_dir,
                           config=config)
            tokenizer.write(tmp)
    finally:
        for m in models:
            m.close()
    return MergeSummary(out_dir, len(items), len(shards), written, time.perf_counter() - start)


def _copy_tensors(plan: RoutePlan, models: list[SourceModel],
                  jobs: dict[str, tuple[int, str, str | None, float, float]],
                  shards: list[list[PlannedTensor]], tmp: Path, progress: bool) -> int:
    """Each output tensor read from its source, multiplied by its tensor scale (mergekit's
    `tensor * scale`, in the dtype it is stored in), its hop's factor folded in, cast,
    written."""
    written = 0
    bar = progress_bar(sum(len(s) for s in shards), progress)
    try:
        for fname, shard in zip(shard_names(len(shards)), shards, strict=True):
            writer = ShardWriter(tmp / fname, shard)
            for name, dtype, _ in shard:
                src, src_name, rest, factor, multiplier = jobs[name]
                tensor = models[src].read(src_name)
                if multiplier != 1.0:
                    tensor = tensor.to(dtype) * multiplier
                if rest is not None and rest in plan.folds and factor != 1.0:
                    tensor = plan.fold(tensor.float(), rest, factor)
                elif rest is None and factor != 1.0:
                    tensor = tensor.float() * factor
                writer.write(name, tensor.to(dtype))
                bar.update(1)
            writer.close()
            written += writer.nbytes
    finally:
        bar.close()
    return written


def materialised_bytes(plan: RoutePlan, dtype: torch.dtype | None = None) -> int:
    """Bytes a stock copy of the routed model holds (what the routed runtime saves)."""
    total = 0
    for name in plan.output_tensors():
        src, src_name = plan.outer_tensor(name)
        e = plan.layouts[src].model.entries[src_name]
        total += e.numel * (torch.empty(0, dtype=dtype or e.dtype).element_size())
    for k in range(len(plan.hops)):
        for rest in plan.ref.layer_shapes:
            src, src_name = plan.layer_tensor(k, rest)
            e = plan.layouts[src].model.entries[src_name]
            total += e.numel * (torch.empty(0, dtype=dtype or e.dtype).element_size())
    return total
