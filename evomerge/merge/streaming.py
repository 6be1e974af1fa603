"""The streaming parameter merge: recipe + source directories → merged model directory.

Tensors are read one at a time, merged in float32 on the chosen device, and written straight
into shards whose layout is planned before the first byte is read. Peak memory is the tensors
in flight (bounded by an element budget), not the model size. Everything is written into a
temporary sibling directory that is renamed into place only when complete, so a failed merge
leaves nothing behind. `evomerge.merge.directory.merge_to_directory` calls it for every recipe
without a layer route (a route goes to its sibling `route_export`).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from evomerge.atomic import directory_atomic
from evomerge.merge.errors import MergeError
from evomerge.merge.options import MergeOptions, MergeSummary
from evomerge.merge.output import (
    PlannedTensor,
    plan_shards,
    progress_bar,
    shard_names,
    write_metadata,
)
from evomerge.merge.sources import check_compatible, open_models
from evomerge.merge.tensor_merge import merge_tensor
from evomerge.merge.tensors import TORCH_DTYPES, all_finite, numel
from evomerge.merge.tokenizer import plan_tokenizer
from evomerge.models.architecture import count_layers, tensor_site
from evomerge.models.safetensors_io import ShardWriter
from evomerge.models.source import SourceModel
from evomerge.recipe import Recipe


def write_parameter_merge(recipe: Recipe, out_dir: Path, options: MergeOptions
                          ) -> MergeSummary:
    """Merge every tensor of the recipe's models into `out_dir`, with its metadata and
    tokenizer (the caller has checked that `out_dir` may be written)."""
    start = time.perf_counter()
    base, sources = open_models(recipe, options)
    models = ([base] if base else []) + sources
    try:
        check_compatible(models)
        tokenizer = plan_tokenizer(recipe, base, sources, options.allow_download)
        ref = models[0]
        num_layers = count_layers(list(ref.entries), ref.config)
        out_dtype = TORCH_DTYPES[recipe.dtype] if recipe.dtype else None
        items = []
        for name, e in ref.entries.items():
            dt = out_dtype if (out_dtype and e.dtype.is_floating_point) else e.dtype
            items.append((name, dt, e.shape))
        # Largest first: the embedding and the head then overlap on the two threads instead
        # of the head running alone at the end.
        items.sort(key=lambda item: -numel(item[2]))
        shards = plan_shards(items, options.shard_size)
        with directory_atomic(out_dir) as tmp:
            written = _write_shards(recipe, base, sources, shards, tmp, num_layers, options)
            write_metadata(recipe, ref, shards, tmp, out_dtype, options, out_dir)
            tokenizer.write(tmp)
    finally:
        for m in models:
            m.close()
    return MergeSummary(out_dir, len(items), len(shards), written, time.perf_counter() - start)


def _write_shards(recipe: Recipe, base: SourceModel | None, sources: list[SourceModel],
                  shards: list[list[PlannedTensor]], tmp: Path, num_layers: int,
                  options: MergeOptions) -> int:
    device = torch.device(options.device)

    def job(name: str, dtype: torch.dtype) -> torch.Tensor:
        """One output tensor; the inputs in flight are its sources in their own dtype."""
        ref = base or sources[0]
        if not ref.entries[name].dtype.is_floating_point:
            return ref.read(name)  # integer buffers are copied, not merged
        models = ([base] if base else []) + list(sources)
        inputs = [m.read(name).to(device) for m in models]
        site = tensor_site(name, num_layers)
        try:
            out = merge_tensor(recipe, site, inputs[0] if base else None,
                               inputs[1:] if base else inputs, out_dtype=dtype)
        except ValueError as exc:
            raise MergeError(f"tensor {name}: {exc}") from None
        # Every method multiplies and adds every input entry, so a NaN or Inf in any source
        # reaches the output (bf16 and fp16 keep both): checking the output is enough, and
        # far cheaper than checking each input; the inputs are searched only to name the
        # culprit.
        if not options.allow_nonfinite and not all_finite(out):
            for m, t in zip(models, inputs, strict=True):
                if not bool(torch.isfinite(t).all()):
                    raise MergeError(
                        f"{m.path}: tensor {name} contains NaN or Inf (pass --allow-nonfinite "
                        "to merge anyway)"
                    )
            raise MergeError(f"tensor {name}: the merge produced NaN or Inf (check weights)")
        return out.cpu()

    threads = 1 if device.type == "cuda" else max(1, options.threads)
    threads_before = torch.get_num_threads()
    # One intra-op thread per worker: tensors are the parallelism, and on ~1M-entry chunks
    # torch's own threads spend more time synchronising than computing. OpenMP keeps the
    # thread count per thread, so each worker sets it for itself.
    torch.set_num_threads(1)
    total = sum(len(s) for s in shards)
    bar = progress_bar(total, options.progress)
    written = 0
    try:
        with ThreadPoolExecutor(max_workers=threads,
                                initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for shard_name, shard in zip(shard_names(len(shards)), shards, strict=True):
                writer = ShardWriter(tmp / shard_name, shard)
                pending: deque[tuple[str, int, Future]] = deque()
                inflight = 0
                it = iter(shard)
                nxt = next(it, None)
                while nxt is not None or pending:
                    while nxt is not None and (
                        not pending
                        or (len(pending) < threads + 1
                            and inflight + numel(nxt[2]) <= options.max_inflight_elements)
                    ):
                        pending.append((nxt[0], numel(nxt[2]), pool.submit(job, nxt[0], nxt[1])))
                        inflight += numel(nxt[2])
                        nxt = next(it, None)
                    name, n, fut = pending.popleft()
                    writer.write(name, fut.result())
                    inflight -= n
                    bar.update(1)
                writer.close()
                written += writer.nbytes
    finally:
        torch.set_num_threads(threads_before)
        bar.close()
    return written
