"""Which tensor belongs to which decoder layer, and what kind of tensor it is.

Parameters in a recipe may vary per layer and per tensor kind; this module is the only place
that reads those facts off tensor names.
"""

from __future__ import annotations

import re

from evomerge.recipe import TensorSite

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")

# Checked in order; the first match wins (a norm inside attention is a norm).
_KIND_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("embed", ("embed_tokens", "wte", "wpe", "word_embeddings", "embed_in")),
    ("head", ("lm_head", "embed_out")),
    ("norm", ("norm", "ln_", "layernorm")),
    ("attention", ("attn", "attention")),
    ("mlp", ("mlp", "feed_forward", "ffn")),
)

# mergekit filters are substrings of tensor names; these stand for our kinds on export.
MERGEKIT_FILTER_FOR_KIND = {
    "embed": "embed_tokens",
    "head": "lm_head",
    "norm": "norm",
    "attention": "self_attn",
    "mlp": "mlp",
}


def layer_index(name: str) -> int | None:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def tensor_kind(name: str) -> str:
    lowered = name.lower()
    for kind, needles in _KIND_PATTERNS:
        if any(n in lowered for n in needles):
            return kind
    return "other"


def tensor_site(name: str, num_layers: int) -> TensorSite:
    return TensorSite(name=name, kind=tensor_kind(name), layer=layer_index(name),
                      num_layers=num_layers)


def count_layers(names: list[str], config: dict | None = None) -> int:
    """Decoder layer count: from config.json when it says, else from the tensor names."""
    if config:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(config.get(key), int):
                return config[key]
    idx = [i for i in (layer_index(n) for n in names) if i is not None]
    return max(idx) + 1 if idx else 0
