"""The routed runtime: a layer route run as a stock `transformers` model without copying a layer.

A `RouteBuilder` keeps the sources' tensors resident on its device (each wrapped once in a
Parameter that shares its storage) and owns one model skeleton built from the first source's
config, its parameters on the meta device. Per candidate it re-points the skeleton: hop k is a
stock decoder layer with `layer_idx = k` (its own KV-cache slot; a layer object listed twice
would share one and corrupt generation), built once per (hop, attention type) and cached,
whose Parameters are replaced by the source layer's own; `config.num_hidden_layers` and
`config.layer_types` follow the route, and the model object stays the same, so evaluators
that wrap it once keep working. Scales run in the folded form of `evomerge.merge.routing`:
forward hooks multiply each hop's residual branches by 1/C_k and the embeddings by s_0, the
very factors the export folds into the weights, and a hop's tensor scales (mergekit's
per-tensor `scale`) multiply the outputs of the modules whose weights the export scales.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from evomerge.merge.errors import MergeError
from evomerge.merge.inplace import BuildStats, available_memory, check_sources_and_dtype
from evomerge.merge.options import MergeOptions
from evomerge.merge.routing import RoutePlan
from evomerge.merge.sources import open_models
from evomerge.merge.tensors import TORCH_DTYPES
from evomerge.recipe import Recipe


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the meta device and their buffers real: the
    buffers (rotary frequencies, embedding scales) are computed from the config as usual."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _buffers_to(module: nn.Module, device: torch.device) -> None:
    """Move only the buffers (the parameters are meta until a route points them)."""
    for sub in module.modules():
        for name, buf in sub._buffers.items():
            if buf is not None:
                sub._buffers[name] = buf.to(device)


def _scale_output(module: nn.Module, args: Any, output: Any) -> Any:
    factor = module._evomerge_factor
    if factor == 1.0:
        return output
    if isinstance(output, tuple):  # attention modules return (output, weights)
        return (output[0] * factor, *output[1:])
    return output * factor


def _set_output_factors(layer: nn.Module, factors: dict[str, float]) -> None:
    """Multiply the outputs of the submodules named in `factors` (a hook registered on first
    use); every other submodule hooked for an earlier candidate goes back to 1."""
    for name, module in layer.named_modules():
        factor = factors.get(name, 1.0)
        if not hasattr(module, "_evomerge_factor"):
            if factor == 1.0:
                continue
            module.register_forward_hook(_scale_output)
        module._evomerge_factor = factor


class RouteBuilder:
    """Resident sources + one routed skeleton; `build(recipe)` re-points it to the route."""

    def __init__(self, sources: list[str], dtype: str | None = None, device: str = "cpu",
                 allow_pickle: bool = False, allow_download: bool = False):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise MergeError(f"device: {device} requested but CUDA is not available")
        self.device = torch.device(device)
        self.source_refs = list(sources)
        probe = Recipe.from_dict({"method": "linear",
                                  "sources": [{"model": s} for s in sources]}, "<builder>")
        _, self.models = open_models(probe, MergeOptions(allow_pickle=allow_pickle,
                                                         allow_download=allow_download))
        try:
            first = self.models[0].entries
            floats = [e for e in first.values() if e.dtype.is_floating_point]
            self.dtype = TORCH_DTYPES[dtype] if dtype else floats[0].dtype
            self._preflight()
            self.tensors = [{n: m.read(n).to(self.device, self.dtype) for n, e in
                             m.entries.items() if e.dtype.is_floating_point}
                            for m in self.models]
            self.ref_path = self.models[0].path
            self.model = self._skeleton()
        finally:
            for m in self.models:
                m.close()
        self._params: dict[tuple[int, str], nn.Parameter] = {}
        self._hops: dict[tuple[int, str | None], nn.Module] = {}
        self.last: BuildStats | None = None

    # --- setup ------------------------------------------------------------------------------
    def _preflight(self) -> None:
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        need = sum(e.numel * itemsize for m in self.models for e in m.entries.values()
                   if e.dtype.is_floating_point)
        free = available_memory(self.device)
        if need > 0.9 * free:
            raise MergeError(f"candidate: keeping {len(self.models)} source(s) resident needs "
                             f"{need / 2**30:.2f} GiB, but {self.device} has "
                             f"{free / 2**30:.2f} GiB available; route fewer sources or use a "
                             "16-bit candidate.dtype")

    def _skeleton(self) -> Any:
        """The model object every candidate runs in: one layer to learn the layer class,
        an untied head (a scaled embedding must not scale the head), nothing allocated."""
        # transformers takes seconds to import: paid by the worker that builds, not on import
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(self.ref_path)
            config.num_hidden_layers = 1
            if getattr(config, "layer_types", None):
                config.layer_types = config.layer_types[:1]
            config.tie_word_embeddings = False
            with parameters_on_meta():
                model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        except Exception as exc:
            raise MergeError(f"{self.ref_path}: transformers cannot build it as a causal LM: "
                             f"{type(exc).__name__}: {exc}") from None
        _buffers_to(model, self.device)
        model.eval()
        self.inner = getattr(model, model.base_model_prefix)
        self.layer_class = type(self.inner.layers[0])
        self.outer_names = [n for n, _ in model.named_parameters(remove_duplicate=False)
                            if ".layers." not in f".{n}"]
        embed = model.get_input_embeddings()
        embed._evomerge_factor = 1.0
        embed.register_forward_hook(_scale_output)
        return model

    def _hop(self, k: int, layer_type: str | None) -> nn.Module:
        """The decoder layer of hop k for this attention type (built on first use)."""
        key = (k, layer_type)
        if key not in self._hops:
            config = self.model.config
            saved = getattr(config, "layer_types", None)
            if layer_type is not None:
                config.layer_types = [layer_type] * (k + 1)
            try:
                with parameters_on_meta():
                    layer = self.layer_class(config, layer_idx=k)
            finally:
                if layer_type is not None:
                    config.layer_types = saved
            _buffers_to(layer, self.device)
            layer.eval()
            self._hops[key] = layer
        return self._hops[key]

    def _param(self, source: int, name: str) -> nn.Parameter:
        """The source tensor as a Parameter sharing its storage (made once)."""
        key = (source, name)
        if key not in self._params:
            self._params[key] = nn.Parameter(self.tensors[source][name], requires_grad=False)
        return self._params[key]

    @staticmethod
    def _assign(module: nn.Module, name: str, param: nn.Parameter) -> None:
        owner, _, leaf = name.rpartition(".")
        (module.get_submodule(owner) if owner else module)._parameters[leaf] = param

    # --- per candidate ----------------------------------------------------------------------
    def plan(self, recipe: Recipe) -> RoutePlan:
        """`recipe`'s route resolved against the resident sources (refused if it names others)."""
        check_sources_and_dtype(recipe, self.source_refs, self.dtype)
        return RoutePlan(recipe, self.models)

    def check(self, recipe: Recipe) -> None:
        """Refuse a recipe this builder cannot run, naming the field."""
        self.plan(recipe)

    def build(self, recipe: Recipe) -> Any:
        """Point the skeleton at `recipe`'s route and return it (no weight is copied)."""
        start = time.perf_counter()
        plan = self.plan(recipe)
        layers = []
        for k, hop in enumerate(plan.hops):
            layer = self._hop(k, hop.layer_type)
            for rest in plan.ref.layer_shapes:
                self._assign(layer, rest, self._param(*plan.layer_tensor(k, rest)))
            _set_output_factors(layer, plan.output_factors(k))
            layers.append(layer)
        for name in self.outer_names:
            self._assign(self.model, name, self._param(*plan.outer_tensor(name)))
        self.model.get_input_embeddings()._evomerge_factor = plan.embed_factor
        self.inner.layers = nn.ModuleList(layers)
        for config in {id(c): c for c in (self.model.config, self.inner.config)}.values():
            config.num_hidden_layers = len(layers)
            if plan.layer_types is not None:
                config.layer_types = plan.layer_types
        if hasattr(self.inner, "has_sliding_layers"):
            self.inner.has_sliding_layers = "sliding_attention" in (plan.layer_types or [])
        self.last = BuildStats(time.perf_counter() - start, 0, 0, 0)
        return self.model

    def tokenizer(self) -> Any:
        """The first source's tokenizer, for the evaluators."""
        from transformers import AutoTokenizer  # seconds to import; see _skeleton

        return AutoTokenizer.from_pretrained(self.ref_path)

    def close(self) -> None:
        """Nothing to release (no thread pool); here for the builder interface."""
