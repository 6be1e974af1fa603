"""The streaming materialiser: recipe + source directories → merged model directory.

Tensors are read one at a time, merged in float32 on the chosen device, and written straight
into shards whose layout is planned before the first byte is read. Peak memory is the tensors
in flight (bounded by an element budget), not the model size. Everything is written into a
temporary sibling directory that is renamed into place only when complete, so a failed merge
leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.atomic import directory_atomic
from evomerge.merge.tensor_merge import merge_tensor
from evomerge.models.architecture import count_layers, tensor_site
from evomerge.models.safetensors_io import ShardWriter
from evomerge.models.source import SourceError, SourceModel
from evomerge.recipe import Recipe

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class MergeError(ValueError):
    """A merge that cannot proceed; the message names the file, tensor or field at fault."""


@dataclass
class MergeOptions:
    device: str = "cpu"
    shard_size: int = 2 * 1024**3
    overwrite: bool = False
    allow_nonfinite: bool = False
    allow_pickle: bool = False
    allow_download: bool = False
    workers: int = 2
    max_inflight_elements: int = 64 * 1024 * 1024
    progress: bool = False
    # more files for the output directory (name → text), written before it is renamed into
    # place, so they appear together with the weights or not at all
    extra_files: dict[str, str] | None = None


@dataclass
class MergeSummary:
    out_dir: Path
    tensors: int
    shards: int
    bytes_written: int
    seconds: float


def parse_size(text: str) -> int:
    """'500MB', '2GB', '1.5GiB', '123' (bytes) → bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = text.strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise MergeError(f"shard size: cannot parse {text!r} (try 500MB or 2GB)") from None
    if unit not in units or value <= 0:
        raise MergeError(f"shard size: cannot parse {text!r} (try 500MB or 2GB)")
    return int(value * units[unit])


def open_models(recipe: Recipe, options: MergeOptions) -> tuple[SourceModel | None,
                                                                 list[SourceModel]]:
    opened: list[SourceModel] = []
    where = "base"
    try:
        base = None
        if recipe.base:
            base = SourceModel.open(recipe.base, options.allow_pickle, options.allow_download)
            opened.append(base)
        sources = []
        for i, s in enumerate(recipe.sources):
            where = f"sources[{i}].model"
            sources.append(SourceModel.open(s.model, options.allow_pickle,
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


def plan_shards(items: list[tuple[str, torch.dtype, tuple[int, ...]]], shard_size: int
                ) -> list[list[tuple[str, torch.dtype, tuple[int, ...]]]]:
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


def merge_to_directory(recipe: Recipe, out_dir: str | Path, options: MergeOptions | None = None
                       ) -> MergeSummary:
    options = options or MergeOptions()
    out_dir = Path(out_dir)
    check_output(recipe, out_dir, options)
    if recipe.route is not None:
        from evomerge.merge.route_export import write_route

        return write_route(recipe, out_dir, options)
    start = time.perf_counter()
    base, sources = open_models(recipe, options)
    models = ([base] if base else []) + sources
    try:
        check_compatible(models)
        from evomerge.merge.tokenizer import plan_tokenizer

        tokenizer = plan_tokenizer(recipe, base, sources, options.allow_download)
        ref = models[0]
        num_layers = count_layers(list(ref.entries), ref.config)
        out_dtype = _TORCH_DTYPES[recipe.dtype] if recipe.dtype else None
        items = []
        for name, e in ref.entries.items():
            dt = out_dtype if (out_dtype and e.dtype.is_floating_point) else e.dtype
            items.append((name, dt, e.shape))
        # Largest first: the embedding and the head then overlap on the two workers instead
        # of the head running alone at the end.
        items.sort(key=lambda item: -_numel(item[2]))
        shards = plan_shards(items, options.shard_size)
        with directory_atomic(out_dir) as tmp:
            written = _write_shards(recipe, base, sources, shards, tmp, num_layers, options)
            _write_metadata(recipe, ref, shards, tmp, out_dtype, options, out_dir)
            tokenizer.write(tmp)
    finally:
        for m in models:
            m.close()
    return MergeSummary(out_dir, len(items), len(shards), written, time.perf_counter() - start)


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


def _shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _write_shards(recipe, base, sources, shards, tmp: Path, num_layers: int,
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
        if not options.allow_nonfinite and not _all_finite(out):
            for m, t in zip(models, inputs, strict=True):
                if not bool(torch.isfinite(t).all()):
                    raise MergeError(
                        f"{m.path}: tensor {name} contains NaN or Inf (pass --allow-nonfinite "
                        "to merge anyway)"
                    )
            raise MergeError(f"tensor {name}: the merge produced NaN or Inf (check weights)")
        return out.cpu()

    workers = 1 if device.type == "cuda" else max(1, options.workers)
    threads_before = torch.get_num_threads()
    # One intra-op thread per worker: tensors are the parallelism, and on ~1M-entry chunks
    # torch's own threads spend more time synchronising than computing. OpenMP keeps the
    # thread count per thread, so each worker sets it for itself.
    torch.set_num_threads(1)
    total = sum(len(s) for s in shards)
    bar = _progress(total, options.progress)
    written = 0
    try:
        with ThreadPoolExecutor(max_workers=workers,
                                initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for shard_name, shard in zip(_shard_names(len(shards)), shards, strict=True):
                writer = ShardWriter(tmp / shard_name, shard)
                pending: deque[tuple[str, int, Future]] = deque()
                inflight = 0
                it = iter(shard)
                nxt = next(it, None)
                while nxt is not None or pending:
                    while nxt is not None and (
                        not pending
                        or (len(pending) < workers + 1
                            and inflight + _numel(nxt[2]) <= options.max_inflight_elements)
                    ):
                        pending.append((nxt[0], _numel(nxt[2]), pool.submit(job, nxt[0], nxt[1])))
                        inflight += _numel(nxt[2])
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


def _all_finite(t: torch.Tensor) -> bool:
    """Cheap finiteness: for 16-bit floats, no entry has an all-ones exponent (bit test on
    int16, several times faster than a float32 reduction); otherwise a finite sum proves
    every entry finite and only an overflowing or NaN sum pays for the exact check."""
    if t.dtype in (torch.bfloat16, torch.float16):
        exp = 0x7F80 if t.dtype == torch.bfloat16 else 0x7C00
        return not bool(((t.view(torch.int16) & exp) == exp).any())
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="tensor", desc="merging", disable=not enabled)


def _write_metadata(recipe: Recipe, ref: SourceModel, shards, tmp: Path,
                    out_dtype: torch.dtype | None, options: MergeOptions, out_dir: Path,
                    config: dict | None = None) -> None:
    """Index, config (`config`, else the first model's), recipe and model card; written
    references are portable ones."""
    names = _shard_names(len(shards))
    if len(shards) > 1:
        weight_map = {item[0]: fname for fname, shard in zip(names, shards, strict=True)
                      for item in shard}
        total = sum(_numel(i[2]) * torch.empty((), dtype=i[1]).element_size()
                    for s in shards for i in s)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = dict(config if config is not None else ref.config)
    if config:
        if out_dtype is not None:
            dname = {torch.float32: "float32", torch.float16: "float16",
                     torch.bfloat16: "bfloat16"}[out_dtype]
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
    from evomerge.models.refs import hub_pin, portable_ref, split_revision

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


# what a merge (or `save_pretrained`) writes into a model directory
_MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json",
                "generation_config.json", "tokenizer*", "special_tokens_map.json", "vocab*",
                "merges.txt", "added_tokens.json", "chat_template.jinja", "*.model",
                "README.md", "evomerge_recipe.yaml", "mergekit_config.yml")


def check_replaceable(out_dir: Path, inputs: list[str] | None = None) -> None:
    """--overwrite replaces a model directory, never anything else: not a file, not the
    current directory or one above it, not an input model, not a folder holding files a merge
    does not write (a project, a run directory)."""
    import fnmatch

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
                                                 for pat in _MODEL_FILES)))
    if foreign:
        raise MergeError(f"{out_dir}: holds {foreign[0]!r}"
                         f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, "
                         "which a merge does not write; --overwrite replaces only a model "
                         "directory: choose another path or remove it yourself")
