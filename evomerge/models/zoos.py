"""The example source families a config may ask for (`zoo: {kind, dir}`): built on first use,
so a fresh clone runs the quickstart with one command.

The zoo builders are imported inside the functions that use them: they import torch (and
transformers when building), seconds of work, while `search_config` imports this module to
validate a config's `zoo:` block without either.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from evomerge.models import smollm2

KINDS = ("skills", "skills_lora", "example", "smollm2", "smollm2_mix")
DURATION = {"skills": "about a minute", "skills_lora": "about a minute",
            "example": "seconds",
            "smollm2": "about 10 minutes: conversion and two fine-tunes",
            "smollm2_mix": "about 20 minutes: conversion and three fine-tunes"}


def ready(kind: str, out: Path) -> bool:
    """A finished zoo of this kind is at `out`."""
    if kind == "smollm2":
        from evomerge.models.smollm2_experts import experts_ready  # torch: see the module docstring

        return smollm2.ready(out / "base") and experts_ready(out)
    if kind == "smollm2_mix":
        from evomerge.models import smollm2_interfering  # torch: see the module docstring

        return smollm2.ready(out / "base") and smollm2_interfering.experts_ready(out)
    if kind == "skills":
        from evomerge.models.skill_zoo import zoo_ready  # torch: see the module docstring

        return zoo_ready(out)
    if kind == "skills_lora":
        from evomerge.models.skill_lora import lora_zoo_ready  # torch: see the module docstring

        return lora_zoo_ready(out)
    return (out / "base" / "config.json").exists() and (out / "tasks").is_dir()


def check(kind: str) -> None:
    """Raise (SmolLM2Error) where this kind cannot be built here, before anything is said or
    written."""
    if kind in ("smollm2", "smollm2_mix"):
        smollm2.gguf_path()


def build(kind: str, out: Path, log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Build the zoo at `out` (whatever is there) and return name → directory."""
    check(kind)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if kind == "smollm2":  # the real pretrained base and experts fine-tuned from it
        from evomerge.models.smollm2_experts import build_experts  # torch: see the module docstring

        out.mkdir(parents=True, exist_ok=True)
        return build_experts(out, smollm2.convert(out / "base", say), log=say)
    if kind == "smollm2_mix":  # the same base, three experts that interfere (issue 23)
        from evomerge.models import smollm2_interfering  # torch: see the module docstring

        out.mkdir(parents=True, exist_ok=True)
        return smollm2_interfering.build_experts(out, smollm2.convert(out / "base", say),
                                                 log=say)
    if kind == "skills":
        from evomerge.models.skill_zoo import build_skill_zoo  # torch: see the module docstring

        return build_skill_zoo(out, log=say)
    if kind == "skills_lora":  # the same base, LoRA adapters as the experts (issue 25)
        from evomerge.models.skill_lora import build_skill_lora_zoo  # torch: the docstring

        return build_skill_lora_zoo(out, log=say)
    from evomerge.models.tiny import build_example_zoo  # torch: see the module docstring

    return build_example_zoo(out)


def ensure(kind: str, out: Path, log: Callable[[str], None] | None = None) -> bool:
    """Build the zoo at `out` unless a finished one is there; True if it was built now."""
    if ready(kind, out):
        return False
    check(kind)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"building the {kind} zoo in {out} (once; {DURATION[kind]} on 2 CPU cores)")
    build(kind, out, say)
    return True
