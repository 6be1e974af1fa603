"""Benchmark: a 3-adapter search's workers against the same search over full fine-tunes
(issue 25, part 1): resident memory and in-place build time per candidate.

For each model, three PEFT LoRA adapters over one base, and the three full models peft's
`merge_and_unload` makes of them (what a user would otherwise have to write to disk). A
`CandidateBuilder` is built over each set, as a search worker builds it, and then builds
the same random task-arithmetic candidates (per-source weights); the table gives the bytes it
keeps resident, the process's resident memory growth while it is built, and the median build
time. Both builders give the same weights (tests/test_lora_sources.py).

Models: the LoRA skill zoo (`evomerge build-zoo skill_zoo_lora --kind skills_lora`: rank-8
adapters trained here) and a wider Llama with random weights and random rank-16 adapters on
every linear layer (the ratio that matters for real models: the adapters' share of the
weights shrinks as the model widens).

    python scripts/bench_lora.py [--zoo skill_zoo_lora] [--builds 20]
"""

from __future__ import annotations

import argparse
import gc
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from evomerge.benchmarking import machine_info, write_results
from evomerge.merge.inplace import CandidateBuilder
from evomerge.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]


def full_models(base: Path, adapters: list[Path], out: Path) -> list[Path]:
    """Each adapter merged into a full copy of the base by peft itself."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = []
    for a in adapters:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, a).merge_and_unload()
        merged.save_pretrained(out / a.name)
        AutoTokenizer.from_pretrained(base).save_pretrained(out / a.name)
        paths.append(out / a.name)
    return paths


def wide_family(out: Path, hidden: int, layers: int, rank: int) -> tuple[Path, list[Path]]:
    """A Llama with random weights and three random LoRA adapters over it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from evomerge.models.skill_zoo import write_tokenizer

    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=hidden * 3,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64,
                      num_key_value_heads=hidden // 64, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out / "base")
    write_tokenizer(out / "base")
    adapters = []
    for i in range(3):
        torch.manual_seed(1 + i)
        model = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
        lora = get_peft_model(model, LoraConfig(
            r=rank, lora_alpha=2 * rank, init_lora_weights=False,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj"]))
        lora.save_pretrained(out / f"adapter{i}")
        adapters.append(out / f"adapter{i}")
    return out / "base", adapters


def measure(base: Path, sources: list[str], builds: int) -> dict[str, float]:
    gc.collect()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    builder = CandidateBuilder(str(base), sources, dtype="float32", threads=2)
    rss1 = proc.memory_info().rss
    rng = np.random.default_rng(0)
    times = []
    for _ in range(builds):
        recipe = Recipe.from_dict({"method": "task_arithmetic", "base": str(base),
                                   "dtype": "float32",
                                   "parameters": {"weight": [float(w) for w in
                                                             rng.uniform(0, 1, 3)]},
                                   "sources": [{"model": s} for s in sources]})
        t0 = time.perf_counter()
        builder.build(recipe)
        times.append(time.perf_counter() - t0)
    out = {"resident": builder.resident_bytes, "rss": rss1 - rss0,
           "build": statistics.median(times)}
    builder.close()
    del builder
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=Path("skill_zoo_lora"))
    ap.add_argument("--builds", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "lora_sources.md")
    args = ap.parse_args()
    if not (args.zoo / "zoo.json").exists():
        from evomerge.models.skill_lora import build_skill_lora_zoo

        build_skill_lora_zoo(args.zoo)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        families = [("LoRA skill zoo (rank 8, trained)", args.zoo / "base",
                     sorted((args.zoo / "adapters").iterdir()))]
        base, adapters = wide_family(Path(tmp) / "wide", args.hidden, args.layers, args.rank)
        families.append((f"Llama {args.hidden} wide, {args.layers} layers (rank "
                         f"{args.rank}, random)", base, adapters))
        for i, (name, base, adapters) in enumerate(families):
            fulls = full_models(base, adapters, Path(tmp) / f"full{i}")
            a = measure(base, [f"{base}+{p}" for p in adapters], args.builds)
            f = measure(base, [str(p) for p in fulls], args.builds)
            params = sum(p.stat().st_size for p in base.glob("*.safetensors"))
            rows.append((name, params, a, f))
    out = ["# LoRA adapters as sources: worker memory and in-place build time", "",
           f"Command: `python scripts/bench_lora.py {shlex.join(sys.argv[1:])}`", "",
           *machine_info(), "",
           "Three adapters over one base against the three full models peft's "
           "`merge_and_unload` makes of them, each set held by a `CandidateBuilder` as a "
           "search worker holds it (float32, CPU, 2 merge threads). Resident: the bytes the "
           f"builder keeps (base + sources); RSS: the process's growth while it is built (the "
           f"live model included); build: median of {args.builds} random task-arithmetic "
           "candidates.", "",
           "| model (base size) | sources | resident | RSS growth | build per candidate |",
           "|---|---|---|---|---|"]
    for name, size, a, f in rows:
        for label, m in (("3 LoRA adapters", a), ("3 full fine-tunes", f)):
            out.append(f"| {name} ({size / 2**20:.1f} MiB) | {label} | "
                       f"{m['resident'] / 2**20:.1f} MiB | {m['rss'] / 2**20:.1f} MiB | "
                       f"{m['build'] * 1000:.1f} ms |")
        out.append(f"| | adapters / full | {a['resident'] / f['resident']:.2f}x | "
                   f"{a['rss'] / max(f['rss'], 1):.2f}x | {a['build'] / f['build']:.2f}x |")
    write_results(args.out, "\n".join(out) + "\n")


if __name__ == "__main__":
    main()
