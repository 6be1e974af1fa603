"""Tiny decoders of the four families layer routes support, built and saved on the fly, and
the reference a route must reproduce: its hops run one by one through the sources' own layer
modules in plain PyTorch, each hop's input multiplied by its scale (the paper's semantics)."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ["llama", "mistral", "qwen2", "gemma2"]
WINDOW = 5  # shorter than the test sequences: sliding and full attention differ


def family_config(family: str, layers: int):
    import transformers as tf

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  initializer_range=0.2)
    if family == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=False)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=WINDOW)
    if family == "qwen2":  # layer 0 full attention, the others sliding: types per hop
        return tf.Qwen2Config(**common, use_sliding_window=True, sliding_window=WINDOW,
                              max_window_layers=1)
    if family == "gemma2":  # post-norm blocks, (1 + w) norms, tied head, softcapping
        return tf.Gemma2Config(**common, head_dim=8, sliding_window=WINDOW,
                               query_pre_attn_scalar=8)
    raise ValueError(family)


def write_model(family: str, out: Path, layers: int, seed: int) -> Path:
    """A randomly initialised model of `family` (norm weights perturbed too), saved."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, layers))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    return out


def load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@torch.no_grad()
def reference_logits(models: list, route: list[tuple[int, int, float]], ids: torch.Tensor,
                     embed: int = 0, head: int | None = None) -> torch.Tensor:
    """Logits of `route` ((source, layer, scale) hops) run layer by layer."""
    head = embed if head is None else head
    first, last = models[embed], models[head]
    h = first.get_input_embeddings()(ids)
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    pe = first.model.rotary_emb(h, pos)
    n = ids.shape[1]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    low = torch.finfo(h.dtype).min
    causal = torch.where(j > i, low, 0.0)[None, None]
    sliding = torch.where((j > i) | (i - j >= WINDOW), low, 0.0)[None, None]
    for source, layer, scale in route:
        block = models[source].model.layers[layer]
        cfg = models[source].config
        types = getattr(cfg, "layer_types", None)
        windowed = (types[layer] == "sliding_attention" if types
                    else getattr(cfg, "sliding_window", None) is not None)
        h = block(h * scale, attention_mask=sliding if windowed else causal,
                  position_embeddings=pe, position_ids=pos)
    logits = last.lm_head(last.model.norm(h))
    cap = getattr(last.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
