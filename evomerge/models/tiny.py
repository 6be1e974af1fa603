"""Small Llama model families built offline: a base and fine-tune-like variants.

Nothing may be downloaded at run time, so demos, tests and benchmarks build their own sources:
real transformers Llama checkpoints (config, sharded safetensors, a word-level tokenizer) whose
variants differ from the base by seeded task vectors. Tensor names and shapes come from the
transformers model class itself (built on the meta device), so they are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from evomerge.models.safetensors_io import ShardWriter
from evomerge.models.tiny_tasks import write_example_tasks

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def llama_config(vocab_size: int = 512, hidden_size: int = 64, num_layers: int = 2,
                 intermediate_size: int = 128, num_heads: int = 4, dtype: str = "float32"):
    """A small Llama config (untied head) for a family of test and demo models."""
    # transformers is imported on use, here and below: it takes seconds, and the tests and
    # benchmarks that import this module at collection need none of it until they build
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        intermediate_size=intermediate_size, num_attention_heads=num_heads,
        num_key_value_heads=num_heads, max_position_embeddings=256,
        tie_word_embeddings=False, dtype=dtype, architectures=["LlamaForCausalLM"],
    )


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a Llama with this config, from the model class itself."""
    from transformers import LlamaForCausalLM  # seconds to import; see llama_config

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    return torch.randn(shape, generator=gen) * 0.02


def write_family(out: str | Path, config, variants: list[str], seed: int = 0,
                 delta_scale: float = 0.004, shard_size: int = 2 * 1024**3,
                 dtype: str = "float32") -> dict[str, Path]:
    """Write `base` and each named variant under `out`; returns name → directory.

    A variant is base + τ with τ ~ N(0, delta_scale²) on a seeded random half of the entries
    of every tensor, so variants overlap and conflict the way fine-tunes of one base do.
    """
    out = Path(out)
    shapes = parameter_shapes(config)
    tdtype = _DTYPES[dtype]
    dirs = {name: out / name for name in ["base", *variants]}
    writers: dict[str, list[ShardWriter]] = {}
    plan = _plan(shapes, tdtype, shard_size)
    for name, d in dirs.items():
        d.mkdir(parents=True, exist_ok=True)
        config.dtype = dtype
        cfg = config.to_dict()
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        writers[name] = [ShardWriter(d / fname, items) for fname, items in plan]
        _write_tokenizer(d, config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    for shard_idx, (_, items) in enumerate(plan):
        for tname, _, shape in items:
            base = _tensor(tname, shape, gen)
            writers["base"][shard_idx].write(tname, base.to(tdtype))
            for v_idx, variant in enumerate(variants):
                vgen = torch.Generator().manual_seed(seed * 1000 + v_idx + 1 + hash_name(tname))
                tau = torch.randn(shape, generator=vgen) * delta_scale
                tau *= torch.rand(shape, generator=vgen) < 0.5
                writers[variant][shard_idx].write(tname, (base + tau).to(tdtype))
    for name, ws in writers.items():
        for w in ws:
            w.close()
        if len(plan) > 1:
            weight_map = {t: fname for fname, items in plan for t, _, _ in items}
            (dirs[name] / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    return dirs


def hash_name(name: str) -> int:
    """A stable small integer per tensor name (Python's hash() is salted per process)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 100_003


def _plan(shapes, dtype, shard_size):
    shards: list[tuple[str, list]] = []
    current: list = []
    size = 0
    elem = torch.empty((), dtype=dtype).element_size()
    for name, shape in shapes.items():
        n = elem
        for d in shape:
            n *= d
        if current and size + n > shard_size:
            shards.append(current)
            current, size = [], 0
        current.append((name, dtype, shape))
        size += n
    shards.append(current)
    if len(shards) == 1:
        return [("model.safetensors", shards[0])]
    return [(f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors", s)
            for i, s in enumerate(shards)]


def _write_tokenizer(d: Path, vocab_size: int) -> None:
    """A word-level tokenizer over words w0, w1, …: enough for a model to load and generate."""
    # seconds to import; see llama_config
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i in range(vocab_size - len(specials)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(d)


def build_example_zoo(out: str | Path, size: str = "tiny") -> dict[str, Path]:
    """The README's example sources: a base and three variants ('math', 'code', 'chat'), and
    lm-eval task files for them under `tasks/` (what the example merge searches score)."""
    if size == "tiny":
        cfg = llama_config()
    elif size == "small":  # ~6.6M parameters: big enough to see streaming at work
        cfg = llama_config(vocab_size=4096, hidden_size=256, num_layers=4,
                           intermediate_size=688, num_heads=8)
    else:
        raise ValueError(f"size: unknown zoo size {size!r} (tiny or small)")
    dirs = write_family(out, cfg, ["math", "code", "chat"])
    dirs["tasks"] = write_example_tasks(Path(out) / "tasks", cfg.vocab_size)
    return dirs
