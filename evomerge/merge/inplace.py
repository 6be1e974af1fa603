"""The in-place materialiser: recipe → the weights of one live `transformers` model.

A search builds thousands of candidates from the same sources. Writing each to disk and
loading it back costs far more than the merge itself, so a `CandidateBuilder` opens the
sources once, keeps every tensor resident in its stored dtype on the chosen device, owns one
live model, and per candidate runs the very `merge_tensor` the streaming materialiser runs,
copying each result into the live parameter. The live model is therefore bit-identical to
what `evomerge merge` writes for the same recipe; only the I/O differs. What does not change
between candidates (|τ| order for top-k, DARE's draws) is cached up to a memory budget
(`SelectionCache`), which changes the speed and never the weights.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evomerge.merge.errors import MergeError
from evomerge.merge.options import MergeOptions
from evomerge.merge.selection_cache import SelectionCache
from evomerge.merge.sources import check_compatible, open_models
from evomerge.merge.tensor_merge import merge_tensor
from evomerge.merge.tensors import TORCH_DTYPES, all_finite, numel
from evomerge.merge_methods import get_method
from evomerge.models.architecture import count_layers, tensor_site
from evomerge.models.lora import AdapterModel, LowRank
from evomerge.recipe import Recipe


class LowRankSource:
    """A LoRA source as the builder holds it: the base's resident tensors and the adapter's
    factors; indexing forms one adapter-merged tensor, exactly as `AdapterModel.read` does
    (so in-place candidates equal `evomerge merge`'s), and frees it after the merge."""

    def __init__(self, base: dict[str, torch.Tensor], lowrank: dict[str, LowRank]):
        self.base, self.lowrank = base, lowrank

    def __getitem__(self, name: str) -> torch.Tensor:
        weight = self.base[name]
        update = self.lowrank.get(name)
        return weight if update is None else update.apply(weight)

    @property
    def nbytes(self) -> int:
        """The factors' bytes (the base is counted where it is held)."""
        return sum(lr.nbytes for lr in self.lowrank.values())


def available_memory(device: torch.device) -> int:
    """Bytes the device can still give (host RAM for the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_sources_and_dtype(recipe: Recipe, sources: list[str], dtype: torch.dtype | None
                            ) -> None:
    """A live model is built from its builder's sources, in its dtype, or not at all."""
    refs = [s.model for s in recipe.sources]
    if refs != sources:
        raise MergeError(f"sources: {refs} are not this builder's sources {sources}")
    if recipe.dtype is not None and TORCH_DTYPES[recipe.dtype] != dtype:
        raise MergeError(f"dtype: recipe asks for {recipe.dtype}, the live model is {dtype}")


@dataclass
class BuildStats:
    """What the last build cost (time, tensors, bytes read and written), kept as `last`."""
    seconds: float
    tensors: int
    bytes_read: int
    bytes_written: int


class CandidateBuilder:
    """Resident sources + one live model; `build(recipe)` rewrites the model's weights.

    `base` and `sources` fix the model references every recipe must use (in this order);
    `dtype` is the live model's dtype (recipes whose `dtype` differs are refused, since the
    bit-identity with `evomerge merge` holds only for the same output dtype).
    `cache_bytes` bounds the selection cache; None: half the device memory still available
    once the sources and the live model are resident; 0: no cache.
    """

    def __init__(self, base: str | None, sources: list[str], dtype: str | None = None,
                 device: str = "cpu", threads: int = 2, allow_pickle: bool = False,
                 allow_download: bool = False, cache_bytes: int | None = None):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise MergeError(f"device: {device} requested but CUDA is not available")
        self.device = torch.device(device)
        self.base_ref, self.source_refs = base, list(sources)
        probe = Recipe.from_dict({"method": "linear",
                                  "sources": [{"model": s} for s in sources]}, "<builder>")
        if base:
            probe = probe.model_copy(update={"base": base})
        opts = MergeOptions(allow_pickle=allow_pickle, allow_download=allow_download)
        base_m, source_ms = open_models(probe, opts)
        models = ([base_m] if base_m else []) + source_ms
        try:
            check_compatible(models)
            ref = models[0]
            self.ref_path: Path = ref.path
            self.config = dict(ref.config)
            self.num_layers = count_layers(list(ref.entries), ref.config)
            self.names = [n for n, e in ref.entries.items() if e.dtype.is_floating_point]
            # Largest first, as in the streaming merge: big tensors overlap on the threads.
            self.names.sort(key=lambda n: -numel(ref.entries[n].shape))
            self.stored_dtype = ref.entries[self.names[0]].dtype if self.names else None
            self.dtype = TORCH_DTYPES[dtype] if dtype else self.stored_dtype
            self._preflight(models, source_ms, base_m is not None)
            self.base = ({n: base_m.read(n).to(self.device) for n in self.names}
                         if base_m else None)
            # an adapter's base is resident once, shared with the run's base when it is that
            self._bases: dict[Path, dict[str, torch.Tensor]] = \
                {base_m.path.resolve(): self.base} if base_m and self.base else {}
            self.sources = [self._resident(m) for m in source_ms]
        finally:
            for m in models:
                m.close()
        def nbytes(d: Any) -> int:
            if isinstance(d, LowRankSource):
                return d.nbytes
            return sum(t.numel() * t.element_size() for t in (d or {}).values())

        self._base_bytes = nbytes(self.base)
        self._source_bytes = sum(nbytes(s) for s in self.sources)
        # every base held once (the run's among them), plus full sources and adapter factors
        self.resident_bytes = sum(nbytes(b) for b in self._bases.values()) + \
            self._source_bytes
        self.model = self._live_model()
        self.params = self._live_parameters()
        self.cache = SelectionCache(available_memory(self.device) // 2
                                    if cache_bytes is None else cache_bytes)
        self.threads = 1 if self.device.type == "cuda" else max(1, threads)
        self._pool = (ThreadPoolExecutor(self.threads, initializer=torch.set_num_threads,
                                         initargs=(1,)) if self.threads > 1 else None)
        self.last: BuildStats | None = None

    # --- setup --------------------------------------------------------------------------
    def _resident(self, m: Any) -> Any:
        """A source's tensors on the device: all of them for a full model; for a LoRA
        adapter its factors only, over its base's tensors (resident once)."""
        if not isinstance(m, AdapterModel):
            return {n: m.read(n).to(self.device) for n in self.names}
        assert m.base is not None
        key = m.base.path.resolve()
        if key not in self._bases:
            self._bases[key] = {n: m.base.read(n).to(self.device) for n in self.names}
        return LowRankSource(self._bases[key],
                             {n: lr.to(self.device) for n, lr in m.lowrank.items()})

    def _preflight(self, models: list[Any], sources: list[Any], has_base: bool) -> None:
        """Refuse before reading a byte when the resident sources and the live model cannot
        fit: a search that dies of memory at its first candidate (or swaps for hours) is
        worse than an error that says what to change."""
        names = set(self.names)
        bases: set[Path] = set()
        resident = 0
        for m in models:  # an adapter costs its factors, and its base once
            if isinstance(m, AdapterModel):
                resident += sum(lr.nbytes for lr in m.lowrank.values())
                m = m.base
            if m.path.resolve() not in bases:
                bases.add(m.path.resolve())
                resident += sum(e.nbytes for n, e in m.entries.items() if n in names)
        itemsize = torch.empty(0, dtype=self.dtype).element_size() if self.dtype else 4
        live = sum(models[0].entries[n].numel for n in self.names) * itemsize
        free = available_memory(self.device)
        if resident + live > 0.9 * free:
            what = f"{'the base and ' if has_base else ''}{len(sources)} source(s)"
            raise MergeError(
                f"candidate: keeping {what} resident needs {resident / 2**30:.2f} GiB and the "
                f"live model {live / 2**30:.2f} GiB, but {self.device} has "
                f"{free / 2**30:.2f} GiB available; use fewer sources, a 16-bit "
                "candidate.dtype, or a device with more memory")

    def _live_model(self) -> Any:
        """The one model object every candidate is written into: loaded once from the first
        model's directory (so buffers and tied weights are set up by transformers itself)."""
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            model = AutoModelForCausalLM.from_pretrained(self.ref_path, dtype=self.dtype)
        except Exception as exc:
            raise MergeError(f"{self.ref_path}: transformers cannot load it as a causal LM: "
                             f"{type(exc).__name__}: {exc}") from None
        return model.to(self.device).eval().requires_grad_(False)

    def _live_parameters(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict(keep_vars=True)
        missing = [n for n in self.names if n not in state]
        if missing:
            raise MergeError(
                f"{self.ref_path}: tensor {missing[0]} has no parameter of that name in the "
                f"live {type(self.model).__name__} (transformers renames this checkpoint's "
                "weights on load); in-place candidates need matching names")
        return {n: state[n] for n in self.names}

    # --- per candidate --------------------------------------------------------------------
    def check(self, recipe: Recipe) -> None:
        """Refuse a recipe this builder cannot build exactly, naming the field."""
        if recipe.route is not None:
            raise MergeError("route: layer-route (data-flow) recipes are not built in place yet")
        if recipe.base is not None and recipe.base != self.base_ref:
            raise MergeError(f"base: {recipe.base!r} is not this builder's base "
                             f"{self.base_ref!r}")
        check_sources_and_dtype(recipe, self.source_refs, self.dtype)
        if recipe.base is None and get_method(recipe.method).needs_base:
            raise MergeError(f"base: method {recipe.method!r} needs a base model")

    def build(self, recipe: Recipe) -> Any:
        """Write `recipe`'s merged weights into the live model and return it."""
        self.check(recipe)
        start = time.perf_counter()

        def one(name: str) -> int:
            site = tensor_site(name, self.num_layers)
            base = self.base[name] if recipe.base is not None else None
            inputs = [s[name] for s in self.sources]
            try:
                out = merge_tensor(recipe, site, base, inputs, out_dtype=self.dtype,
                                   cache=self.cache)
            except ValueError as exc:
                raise MergeError(f"tensor {name}: {exc}") from None
            if not all_finite(out):
                raise MergeError(f"tensor {name}: the merge produced NaN or Inf")
            self.params[name].data.copy_(out)
            return out.numel() * out.element_size()

        threads_before = torch.get_num_threads()
        try:
            if self._pool is None:
                written = sum(one(n) for n in self.names)
            else:
                torch.set_num_threads(1)
                written = sum(self._pool.map(one, self.names))
        finally:
            torch.set_num_threads(threads_before)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        read = self._source_bytes + (self._base_bytes if recipe.base is not None else 0)
        self.last = BuildStats(time.perf_counter() - start, len(self.names), read, written)
        return self.model

    def tokenizer(self) -> Any:
        """The tokenizer of the base (else the first source), which the evaluators use."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.ref_path)

    def close(self) -> None:
        """Stop the merge thread pool."""
        if self._pool is not None:
            self._pool.shutdown()

