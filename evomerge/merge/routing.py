"""A layer route resolved against its sources: what the routed runtime and the export share.

A route recipe says which layer of which source runs at each hop, with an input scale per hop
(docs/design.md §4). Resolving it against the sources' headers and configs checks everything
that can be wrong before a byte is read (a layer a source lacks, a route that does not start
with the embeddings' source's first layer or end with the head's source's last, sources whose
layers cannot run in one stream), and works out what both consumers need:

* the output config: the embeddings' source's config with one layer per hop and the per-hop
  attention type (`layer_types`) rebuilt from each hop's own layer;
* the fold: with C_k = s_1·…·s_k, running the stream at C_k·g equals a stock model whose hop-k
  residual branches end divided by C_k (RMSNorm is scale-invariant up to its eps, and the
  final norm absorbs the last factor); s_0 multiplies the embeddings, which makes hop 0 exact.
  Pre-norm blocks (Llama, Mistral, Qwen2) fold into `o_proj` and `down_proj`; post-norm blocks
  (Gemma2) into their post-attention and post-feed-forward norms. The runtime applies the
  same factors to the same modules' outputs, so the score the search sees is the score of the
  checkpoint that gets exported.
* the tensor scales: a hop's `tensor_scale` (mergekit passthrough's per-tensor `scale`)
  multiplies tensors of the hop's layer; the export multiplies them as mergekit does, the
  runtime multiplies the output of the module owning them (a linear layer's or a norm's, all
  of whose tensors take one value), which is the same function. A scale without that form
  (a weight scaled apart from its bias, a Gemma (1 + weight) norm) is refused by hop and filter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from evomerge.merge.errors import MergeError
from evomerge.models.architecture import tensor_kind
from evomerge.models.source import SourceModel
from evomerge.recipe import Recipe, TensorScale, matching_scale

_LAYER_NAME = re.compile(r"^(?P<prefix>.+\.layers)\.(?P<index>\d+)\.(?P<rest>.+)$")
# config keys that change what a decoder layer computes without changing a tensor's shape
_SAME_KEYS = ("model_type", "hidden_size", "num_attention_heads", "num_key_value_heads",
              "head_dim", "hidden_act", "hidden_activation", "rms_norm_eps", "rope_theta",
              "rope_parameters", "rope_scaling", "attn_logit_softcapping",
              "query_pre_attn_scalar", "attention_bias", "mlp_bias", "sliding_window")
# where the residual branches of a block end: (tensor name prefix inside a layer, norm offset).
# A linear layer is folded as w·f (its bias too); a norm with offset o as (o + w)·f − o.
_PRE_NORM_FOLD = (("self_attn.o_proj.", None), ("mlp.down_proj.", None))
_POST_NORM_FOLD = (("post_attention_layernorm.", 0.0), ("post_feedforward_layernorm.", 0.0))
_ONE_PLUS_NORMS = ("gemma",)  # model types whose RMSNorm multiplies by (1 + weight)


@dataclass(frozen=True)
class PlannedHop:
    """One hop of a resolved route: the layer it runs, its scale and what it folds."""

    source: int
    layer: int
    scale: float
    factor: float  # 1 / C_k: what the hop's residual branches are multiplied by
    layer_type: str | None


def split_layer_name(name: str) -> tuple[str, int, str] | None:
    """'model.layers.3.mlp.up_proj.weight' → ('model.layers', 3, 'mlp.up_proj.weight')."""
    m = _LAYER_NAME.match(name)
    return (m["prefix"], int(m["index"]), m["rest"]) if m else None


@dataclass
class SourceLayout:
    """What a route needs to know of one source: its layers and the tensors outside them."""

    model: SourceModel
    prefix: str
    num_layers: int
    layer_shapes: dict[str, tuple[int, ...]]  # relative name → shape, from layer 0
    outer: list[str]  # floating-point tensors outside the decoder layers

    @classmethod
    def of(cls, model: SourceModel, where: str) -> SourceLayout:
        """Read the layout off `model`'s header and config; `where` names it in errors."""
        prefixes, layers, shapes, outer = set(), set(), {}, []
        for name, entry in model.entries.items():
            parts = split_layer_name(name)
            if parts is None:
                if entry.dtype.is_floating_point:
                    outer.append(name)
                continue
            prefixes.add(parts[0])
            layers.add(parts[1])
            if parts[1] == 0:
                shapes[parts[2]] = tuple(entry.shape)
        if len(prefixes) != 1:
            raise MergeError(f"{where} ({model.path}): found no decoder layers named "
                             "<prefix>.layers.<i>.*; layer routes need a decoder-only model")
        count = max(layers) + 1
        declared = model.config.get("num_hidden_layers")
        if isinstance(declared, int) and declared != count:
            raise MergeError(f"{where} ({model.path}): config.json says {declared} layers, "
                             f"the weights hold {count}")
        return cls(model, prefixes.pop(), count, shapes, outer)

    def name(self, layer: int, rest: str) -> str:
        """Full name of layer `layer`'s tensor `rest` in this source."""
        return f"{self.prefix}.{layer}.{rest}"

    def embed_name(self) -> str:
        """The embedding tensor's name (the fold scales it by hop 0's scale)."""
        names = [n for n in self.outer if tensor_kind(n) == "embed"]
        if not names:
            raise MergeError(f"{self.model.path}: no embedding tensor found")
        return names[0]

    def layer_type(self, layer: int) -> str | None:
        """The attention type config.json gives this layer (None if it gives none)."""
        types = self.model.config.get("layer_types")
        return types[layer] if isinstance(types, list) and layer < len(types) else None


class RoutePlan:
    """A route recipe checked against its opened sources (in recipe order)."""

    def __init__(self, recipe: Recipe, models: list[SourceModel]):
        if recipe.route is None:
            raise MergeError("route: this recipe has no layer route")
        self.recipe = recipe
        refs = [s.model for s in recipe.sources]
        self._where = [f"sources[{i}] ({recipe.written_ref(r) or r})" for i, r in
                       enumerate(refs)]
        used = sorted({h.source for h in recipe.route} | set(recipe.route_ends))
        self.layouts: dict[int, SourceLayout] = {
            i: SourceLayout.of(models[i], self._where[i]) for i in used}
        self.embed_source, self.head_source = recipe.route_ends
        self.ref = self.layouts[self.embed_source]
        self._check_compatible(used)
        self._check_hops()
        self.hops = self._plan_hops()
        self.embed_factor = recipe.route[0].scale
        self.folds = self._fold_targets()
        self.unused_filters: list[str] = []  # tensor_scale filters matching no tensor anywhere
        self.tensor_scales = self._plan_tensor_scales()

    # --- checks ---------------------------------------------------------------------------
    def _check_compatible(self, used: list[int]) -> None:
        ref_cfg = self.ref.model.config
        for i in used:
            lay = self.layouts[i]
            for key in _SAME_KEYS:
                a, b = ref_cfg.get(key), lay.model.config.get(key)
                if a != b:
                    raise MergeError(
                        f"{self._where[i]}: {key} {b!r} differs from {a!r} of "
                        f"{self._where[self.embed_source]}; a route runs every layer in one "
                        "stream, so the sources must agree on it")
            if lay.layer_shapes.keys() != self.ref.layer_shapes.keys():
                odd = sorted(lay.layer_shapes.keys() ^ self.ref.layer_shapes.keys())[0]
                raise MergeError(f"{self._where[i]}: layer tensor {odd} is in one source's "
                                 f"layers and not the other's "
                                 f"({self._where[self.embed_source]})")
            for rest, shape in lay.layer_shapes.items():
                if shape != self.ref.layer_shapes[rest]:
                    raise MergeError(
                        f"{self._where[i]}: tensor {lay.name(0, rest)} has shape "
                        f"{list(shape)}, {list(self.ref.layer_shapes[rest])} in "
                        f"{self._where[self.embed_source]}; a route needs layers of one shape")
        head = self.layouts[self.head_source]
        a = self.ref.model.entries[self.ref.embed_name()].shape
        b = head.model.entries[head.embed_name()].shape
        if a != b:
            raise MergeError(f"{self._where[self.head_source]}: embedding shape {list(b)} "
                             f"differs from {list(a)} of {self._where[self.embed_source]}")

    def _check_hops(self) -> None:
        route = self.recipe.route or []
        for k, hop in enumerate(route):
            lay = self.layouts[hop.source]
            if hop.layer >= lay.num_layers:
                raise MergeError(f"route[{k}].layer: {hop.layer} is not a layer of "
                                 f"{self._where[hop.source]}, which has {lay.num_layers} "
                                 f"(0-{lay.num_layers - 1})")
            for rest in lay.layer_shapes:
                if lay.name(hop.layer, rest) not in lay.model.entries:
                    raise MergeError(f"{self._where[hop.source]}: missing tensor "
                                     f"{lay.name(hop.layer, rest)}")
        first, last = route[0], route[-1]
        if (first.source, first.layer) != (self.embed_source, 0):
            raise MergeError(
                f"route[0]: starts with layer {first.layer} of {self._where[first.source]}; a "
                f"route starts with layer 0 of the embeddings' source "
                f"{self._where[self.embed_source]} (embed_source)")
        head = self.layouts[self.head_source]
        if (last.source, last.layer) != (self.head_source, head.num_layers - 1):
            raise MergeError(
                f"route[{len(route) - 1}]: ends with layer {last.layer} of "
                f"{self._where[last.source]}; a route ends with the last layer "
                f"({head.num_layers - 1}) of the head's source {self._where[self.head_source]}"
                " (head_source)")

    def _plan_hops(self) -> list[PlannedHop]:
        hops, cumulative = [], 1.0
        for k, hop in enumerate(self.recipe.route or []):
            if k > 0:
                cumulative *= hop.scale
            if not 0 < cumulative < math.inf:
                raise MergeError(f"route[{k}].scale: the product of the scales up to this hop "
                                 f"is {cumulative}, which cannot be folded")
            ltype = self.layouts[hop.source].layer_type(hop.layer)
            if ltype is None and self.ref.layer_type(0) is not None:
                ltype = "full_attention"
            hops.append(PlannedHop(hop.source, hop.layer, hop.scale, 1.0 / cumulative, ltype))
        return hops

    def _fold_targets(self) -> dict[str, float | None]:
        """Relative tensor name → norm offset (None for a linear layer), for every tensor a
        hop's factor folds into; refused when a scale is set and there is nowhere to fold."""
        names = self.ref.layer_shapes
        post = any(n.startswith("post_feedforward_layernorm.") for n in names)
        model_type = self._model_type
        one_plus = model_type.startswith(_ONE_PLUS_NORMS)
        rules = _POST_NORM_FOLD if post else _PRE_NORM_FOLD
        targets: dict[str, float | None] = {}
        for prefix, offset in rules:
            found = [n for n in names if n.startswith(prefix)]
            if not found and self.scaled:
                raise MergeError(
                    f"route: scales other than 1 fold into each layer's {prefix.rstrip('.')}, "
                    f"which {self._where[self.embed_source]} ({model_type or 'unknown type'}) "
                    "does not have; set every scale to 1 for this architecture")
            for n in found:
                targets[n] = (1.0 if one_plus else 0.0) if offset is not None else None
        return targets

    @property
    def _model_type(self) -> str:
        return str(self.ref.model.config.get("model_type", ""))

    def _plan_tensor_scales(self) -> list[dict[str, float]]:
        """Per hop, layer tensor (relative name) → its `tensor_scale` multiplier where not 1,
        each module's checked to have the runtime's form."""
        out: list[dict[str, float]] = []
        written, used = set(), set()
        for k, hop in enumerate(self.recipe.route or []):
            if not hop.tensor_scale:
                out.append({})
                continue
            lay = self.layouts[hop.source]
            chosen = {rest: matching_scale(hop.tensor_scale, lay.name(hop.layer, rest))
                      for rest in lay.layer_shapes}
            modules: dict[str, dict[str, TensorScale | None]] = {}
            for rest, entry in chosen.items():
                modules.setdefault(rest.rpartition(".")[0], {})[rest] = entry
            for module, entries in modules.items():
                self._check_module_scale(k, module, entries)
            written |= {e.filter for e in hop.tensor_scale}
            used |= {e.filter for e in chosen.values() if e is not None}
            out.append({rest: e.value for rest, e in chosen.items()
                        if e is not None and e.value != 1.0})
        self.unused_filters = sorted(str(f) for f in written - used if f is not None)
        return out

    def _check_module_scale(self, k: int, module: str,
                            entries: dict[str, TensorScale | None]) -> None:
        """The runtime scales a module's output: that is the scaled tensors' function only for
        a module linear in its tensors (a linear layer, a norm that multiplies by its weight)
        whose tensors all take one value."""
        values = {rest: 1.0 if e is None else e.value for rest, e in entries.items()}
        if set(values.values()) == {1.0}:
            return
        hop = self.hops[k]
        where = f"route[{k}].tensor_scale (layer {hop.layer} of {self._where[hop.source]})"

        def said(rest: str) -> str:
            e = entries[rest]
            how = ("no entry matches" if e is None else
                   "the entry without filter" if e.filter is None else f"filter {e.filter!r}")
            return f"{rest} by {values[rest]:g} ({how})"

        scaled = sorted(r for r, v in values.items() if v != 1.0)
        if len(set(values.values())) > 1:
            other = next(r for r in sorted(values) if values[r] != values[scaled[0]])
            raise MergeError(f"{where}: multiplies {said(scaled[0])} but {said(other)}; a "
                             f"route scales {module or 'a layer'} as a whole (its output), so "
                             "its tensors need one value")
        leaves = {rest.rpartition(".")[2] for rest in values}
        if not module or not leaves <= {"weight", "bias"}:
            raise MergeError(f"{where}: multiplies {said(scaled[0])}; only the tensors of a "
                             "linear layer or a norm (weight, bias) can be scaled in a route")
        if "norm" in module.rpartition(".")[2] and self._model_type.startswith(_ONE_PLUS_NORMS):
            raise MergeError(f"{where}: multiplies {said(scaled[0])}; {self._model_type} norms "
                             "multiply by (1 + weight), so a scaled weight is not a scaled "
                             "output, which a route cannot run")

    @property
    def scaled(self) -> bool:
        """Whether any hop after the first has a factor to fold (hop 0's scale goes into the
        embeddings)."""
        return any(h.factor != 1.0 for h in self.hops)

    # --- what consumers read --------------------------------------------------------------
    @property
    def layer_types(self) -> list[str] | None:
        """The output config's per-hop attention types (None where the sources have none)."""
        if self.ref.layer_type(0) is None:
            return None
        return [str(h.layer_type) for h in self.hops]

    def layer_tensor(self, k: int, rest: str) -> tuple[int, str]:
        """(source, tensor name) feeding hop k's tensor `rest`."""
        hop = self.hops[k]
        return hop.source, self.layouts[hop.source].name(hop.layer, rest)

    def outer_tensor(self, name: str) -> tuple[int, str]:
        """(source, tensor name) feeding a tensor outside the layers (a name of the
        embeddings' source, or lm_head.weight): embeddings from the embeddings' source, the
        final norm and the head from the head's source (a tied head: its embeddings)."""
        if tensor_kind(name) == "embed":
            return self.embed_source, name
        head = self.layouts[self.head_source]
        if name in head.model.entries:
            return self.head_source, name
        if tensor_kind(name) == "head":
            return self.head_source, head.embed_name()
        raise MergeError(f"{self._where[self.head_source]}: missing tensor {name}")

    @property
    def keeps_tied_head(self) -> bool:
        """A tied head stays tied only when it is exactly the (unscaled) output embedding."""
        tied = "lm_head.weight" not in self.ref.model.entries
        return tied and self.embed_factor == 1.0 and self.embed_source == self.head_source

    def output_tensors(self) -> list[str]:
        """Names of the tensors outside the layers in the routed checkpoint."""
        names = list(self.ref.outer)
        if not self.keeps_tied_head and "lm_head.weight" not in names:
            names.append("lm_head.weight")
        return names

    def tensor_multiplier(self, k: int, rest: str) -> float:
        """What hop k's `tensor_scale` multiplies its layer tensor `rest` by."""
        return self.tensor_scales[k].get(rest, 1.0)

    def output_factors(self, k: int) -> dict[str, float]:
        """Module (relative to its layer) → what the runtime multiplies its output by at hop
        k: its tensor scale, times the hop's fold factor on the fold targets."""
        factors = {rest.rpartition(".")[0]: v for rest, v in self.tensor_scales[k].items()}
        factor = self.hops[k].factor
        if factor != 1.0:
            for module in {rest.rpartition(".")[0] for rest in self.folds}:
                factors[module] = factors.get(module, 1.0) * factor
        return factors

    def fold(self, tensor: Any, rest: str, factor: float) -> Any:
        """A float32 layer tensor with hop factor `factor` folded in (if it is a target)."""
        if factor == 1.0 or rest not in self.folds:
            return tensor
        offset = self.folds[rest]
        if offset is None:
            return tensor * factor
        return (tensor + offset) * factor - offset

    def output_config(self, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
        """config.json of the routed model: one stock decoder layer per hop."""
        config = dict(self.ref.model.config)
        config["num_hidden_layers"] = len(self.hops)
        if self.layer_types is not None:
            config["layer_types"] = self.layer_types
        if not self.keeps_tied_head:
            config["tie_word_embeddings"] = False
        if provenance is not None:
            config["evomerge_route"] = provenance
        return config

    def route_provenance(self, refs: list[str]) -> dict[str, Any]:
        """The route as config.json records it (refs: the sources as written out)."""
        hops: list[list[Any]] = []
        for h, hop in zip(self.hops, self.recipe.route or [], strict=True):
            hops.append([h.source, h.layer, h.scale])
            if hop.tensor_scale:
                hops[-1].append([e.model_dump(exclude_none=True) for e in hop.tensor_scale])
        return {"sources": refs, "embed_source": self.embed_source,
                "head_source": self.head_source, "hops": hops}
