"""Which tensor belongs to which decoder layer, and what kind of tensor it is.

Parameters in a recipe may vary per layer and per tensor kind; this module is the only place
that reads those facts off tensor names. Kinds come from a small table per architecture family
we support (modelled on mergekit's `_data/architectures/*.json`: the exact tensor names of a
family, with layer and expert indices as placeholders); a name no table lists falls back to the
substring patterns below, which cover the usual decoder naming schemes. Torch-free, so the
recipe layer can use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# Where a tensor sits, in the words recipes use (`weight: {attention: 0.3, default: 1}`).
# "mlp" is the feed-forward block, dense or sparse: a mixture of experts' expert weights and
# its router are mlp too (Qwen2-MoE and transformers 5 name the router `mlp.gate`, so the
# patterns and mergekit's `filter: mlp` already treat it so).
TENSOR_KINDS = ("attention", "mlp", "norm", "embed", "head", "other")


@dataclass(frozen=True)
class TensorSite:
    """Where a tensor sits in the model: what parameter resolution needs to know."""

    name: str
    kind: str  # one of TENSOR_KINDS
    layer: int | None  # decoder layer index, None for embeddings / final norm / head
    num_layers: int

    @property
    def t(self) -> float:
        """Relative depth in [0, 1] used by gradients (mergekit's convention: t = 0 outside
        the decoder layers, for the final norm and head too)."""
        if self.layer is None:
            return 0.0
        if self.num_layers <= 1:
            return 1.0
        return self.layer / (self.num_layers - 1)

    @property
    def group_position(self) -> float:
        """Position in [0, 1) used to pick a layer group."""
        if self.layer is None:
            return 0.0 if self.kind == "embed" else 1.0 - 1e-12
        return self.layer / max(self.num_layers, 1)


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")
# a numeric path segment (a layer or an expert index): how names are matched to templates
_INDEX_RE = re.compile(r"(?<=\.)\d+(?=\.)")
_PLACEHOLDERS = ("{layer}", "{expert}")

# The fallback for names no table lists. Checked in order; the first match wins (a norm
# inside attention is a norm).
_KIND_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("embed", ("embed_tokens", "wte", "wpe", "word_embeddings", "embed_in")),
    ("head", ("lm_head", "embed_out")),
    ("norm", ("norm", "ln_", "layernorm")),
    ("attention", ("attn", "attention")),
    ("mlp", ("mlp", "feed_forward", "ffn")),
)

# mergekit filters are substrings of tensor names; these stand for our kinds on export, unless
# the model's architecture table says otherwise (`mergekit_filters`).
MERGEKIT_FILTER_FOR_KIND = {
    "embed": "embed_tokens",
    "head": "lm_head",
    "norm": "norm",
    "attention": "self_attn",
    "mlp": "mlp",
}
# The order exported kind maps list their conditions in: mergekit applies the first filter
# that matches, so norms (whose names may contain "attention") come before attention.
MERGEKIT_KIND_ORDER = ("embed", "head", "norm", "attention", "mlp")


@dataclass(frozen=True)
class ArchitectureTable:
    """One architecture family's tensor names by kind, so kinds are read, not guessed."""

    family: str
    # config.json `architectures` entries the family covers
    architectures: tuple[str, ...]
    # kind → tensor names; "{layer}" and "{expert}" stand for a decoder layer / expert index
    tensors: Mapping[str, tuple[str, ...]]
    # kind → the substrings a mergekit filter needs to pick exactly that kind's tensors, where
    # MERGEKIT_FILTER_FOR_KIND's one substring does not (conditions in MERGEKIT_KIND_ORDER)
    mergekit_filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def templates(self) -> dict[str, str]:
        """Each name template (indices as `#`, as `template_of` writes names) → its kind."""
        out: dict[str, str] = {}
        for kind, names in self.tensors.items():
            for name in names:
                key = name
                for placeholder in _PLACEHOLDERS:
                    key = key.replace(placeholder, "#")
                out[key] = kind
        return out


def _layer(*names: str) -> tuple[str, ...]:
    """Names inside decoder layer {layer} of a `model.layers` stack."""
    return tuple(f"model.layers.{{layer}}.{n}" for n in names)


_LLAMA_ATTENTION = _layer(*(f"self_attn.{p}_proj.weight" for p in "qkvo"))
_LLAMA_NORMS = ("model.norm.weight",) + _layer("input_layernorm.weight",
                                                "post_attention_layernorm.weight")
_LLAMA_MLP = _layer(*(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")))
_LLAMA_ENDS = {"embed": ("model.embed_tokens.weight",), "head": ("lm_head.weight",)}

ARCHITECTURES: tuple[ArchitectureTable, ...] = (
    ArchitectureTable(
        "llama", ("LlamaForCausalLM", "MistralForCausalLM"),
        {**_LLAMA_ENDS, "norm": _LLAMA_NORMS, "attention": _LLAMA_ATTENTION,
         "mlp": _LLAMA_MLP}),
    ArchitectureTable(
        "qwen2", ("Qwen2ForCausalLM",),
        {**_LLAMA_ENDS, "norm": _LLAMA_NORMS,
         "attention": _LLAMA_ATTENTION + _layer(*(f"self_attn.{p}_proj.bias" for p in "qkv")),
         "mlp": _LLAMA_MLP}),
    ArchitectureTable(
        "gemma2", ("Gemma2ForCausalLM",),
        {**_LLAMA_ENDS, "attention": _LLAMA_ATTENTION, "mlp": _LLAMA_MLP,
         "norm": _LLAMA_NORMS + _layer("pre_feedforward_layernorm.weight",
                                       "post_feedforward_layernorm.weight")}),
    # Mixtral-style mixture of experts: checkpoints name each expert's three matrices
    # w1/w2/w3 under block_sparse_moe, next to the router (`gate`); transformers 5 writes
    # them fused under mlp.experts, the router as mlp.gate
    ArchitectureTable(
        "mixtral", ("MixtralForCausalLM",),
        {**_LLAMA_ENDS, "norm": _LLAMA_NORMS, "attention": _LLAMA_ATTENTION,
         "mlp": _layer("block_sparse_moe.gate.weight",
                       *(f"block_sparse_moe.experts.{{expert}}.w{i}.weight" for i in (1, 2, 3)),
                       "mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")},
        mergekit_filters={"mlp": ("mlp", "block_sparse_moe")}),
    ArchitectureTable(
        "gpt2", ("GPT2LMHeadModel",),
        {"embed": ("transformer.wte.weight", "transformer.wpe.weight"),
         "head": ("lm_head.weight",),
         "norm": ("transformer.ln_f.weight", "transformer.ln_f.bias",
                  *(f"transformer.h.{{layer}}.ln_{i}.{p}" for i in (1, 2)
                    for p in ("weight", "bias"))),
         "attention": tuple(f"transformer.h.{{layer}}.attn.{m}.{p}"
                            for m in ("c_attn", "c_proj") for p in ("weight", "bias")),
         "mlp": tuple(f"transformer.h.{{layer}}.mlp.{m}.{p}"
                      for m in ("c_fc", "c_proj") for p in ("weight", "bias"))},
        mergekit_filters={"embed": ("wte", "wpe"), "norm": ("ln_",), "attention": ("attn",)}),
)


def tables_index(tables: tuple[ArchitectureTable, ...] = ARCHITECTURES) -> dict[str, str]:
    """Every table's templates in one map (names identify their family, so one lookup serves
    every model); a template two tables classify differently is a mistake, refused at import."""
    out: dict[str, str] = {}
    for table in tables:
        for key, kind in table.templates().items():
            if out.setdefault(key, kind) != kind:
                raise ValueError(f"architecture tables: {key} is {out[key]} in one table and "
                                 f"{kind} in {table.family}'s")
    return out


_KIND_BY_TEMPLATE = tables_index()
_TABLE_BY_ARCHITECTURE = {a: t for t in ARCHITECTURES for a in t.architectures}


def template_of(name: str) -> str:
    """A tensor name with its numeric segments (layer and expert indices) written `#`."""
    return _INDEX_RE.sub("#", name)


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor belongs to, None outside the layers."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def pattern_kind(name: str) -> str:
    """The kind today's substring patterns give a name (the fallback for unlisted names)."""
    lowered = name.lower()
    for kind, needles in _KIND_PATTERNS:
        if any(n in lowered for n in needles):
            return kind
    return "other"


def tensor_kind(name: str) -> str:
    """A tensor's kind: from the architecture tables when one lists the name, else the
    patterns (names identify their family, so no architecture needs to be given)."""
    return _KIND_BY_TEMPLATE.get(template_of(name)) or pattern_kind(name)


def tensor_site(name: str, num_layers: int) -> TensorSite:
    """Everything parameter resolution needs to know about tensor `name`."""
    return TensorSite(name=name, kind=tensor_kind(name), layer=layer_index(name),
                      num_layers=num_layers)


def architecture_table(architecture: str | None) -> ArchitectureTable | None:
    """The table for a config.json `architectures` entry, None for an unknown one."""
    return _TABLE_BY_ARCHITECTURE.get(architecture) if architecture else None


def mergekit_filters(architecture: str | None = None) -> dict[str, tuple[str, ...]]:
    """Per kind, the substrings whose mergekit filters pick that kind's tensors in a model of
    this architecture (MERGEKIT_FILTER_FOR_KIND's when the architecture is unknown)."""
    out = {kind: (f,) for kind, f in MERGEKIT_FILTER_FOR_KIND.items()}
    table = architecture_table(architecture)
    if table is not None:
        out.update(table.mergekit_filters)
    return out


def count_layers(names: list[str], config: dict | None = None) -> int:
    """Decoder layer count: from config.json when it says, else from the tensor names."""
    if config:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(config.get(key), int):
                return config[key]
    idx = [i for i in (layer_index(n) for n in names) if i is not None]
    return max(idx) + 1 if idx else 0
