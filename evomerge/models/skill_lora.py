"""The skill zoo with LoRA experts (`zoo: {kind: skills_lora}`): the quickstart's base,
trained exactly as there, and one PEFT LoRA adapter per skill instead of a full fine-tune, so
a search can take `base+adapter` sources (configs/quickstart_lora.yaml)."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from evomerge.atomic import directory_atomic
from evomerge.models.skill_data import SKILLS
from evomerge.models.skill_tasks import write_skill_tasks
from evomerge.models.skill_zoo import (
    ZooSettings,
    exact_match,
    format_scores,
    llama_config,
    train_base,
    train_skills,
)

ADAPTERS = {"math": ("add",), "rev": ("rev",), "sort": ("sort",)}
LORA_VERSION = 1
RANK = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER_STEPS = 150
ADAPTER_LR = 2e-3


def build_skill_lora_zoo(out: str | Path, log: Callable[[str], None] = print
                         ) -> dict[str, Path]:
    """Train the base and a LoRA adapter per skill; write them and the lm-eval tasks under
    `out` (into a temporary sibling, renamed into place when all is written)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    s = ZooSettings()
    out = Path(out)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        with directory_atomic(out) as tmp:
            base, base_scores = train_base(s, tmp / "base", log, start)
            scores = {"base": base_scores}
            for i, (name, skills) in enumerate(ADAPTERS.items()):
                model = LlamaForCausalLM(llama_config(s))
                model.load_state_dict(base.state_dict())
                torch.manual_seed(s.seed + 100 + i)
                with warnings.catch_warnings():  # peft asks transformers a deprecated name
                    warnings.simplefilter("ignore", FutureWarning)
                    lora = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK,
                                                            target_modules=TARGETS))
                train_skills(lora, skills, ADAPTER_STEPS, ADAPTER_LR, s.batch, s.seed + 1 + i)
                lora.save_pretrained(tmp / "adapters" / name)
                scores[name] = {k: exact_match(lora, k) for k in SKILLS}
                log(f"{name} adapter trained ({time.perf_counter() - start:.0f} s): "
                    + format_scores(scores[name]))
            write_skill_tasks(tmp / "tasks", s.eval_items, final_dir=out / "tasks")
            (tmp / "zoo.json").write_text(json.dumps({
                "version": LORA_VERSION, "rank": RANK, "targets": TARGETS,
                "adapter_steps": ADAPTER_STEPS, "adapter_lr": ADAPTER_LR,
                "exact_match_test": scores,
                "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    finally:
        torch.set_num_threads(threads)
    return {"base": out / "base", "tasks": out / "tasks"} | {
        name: out / "adapters" / name for name in ADAPTERS}


def lora_zoo_ready(out: str | Path) -> bool:
    """A finished zoo of this version is at `out`."""
    meta = Path(out) / "zoo.json"
    if not meta.exists():
        return False
    try:
        return json.loads(meta.read_text()).get("version") == LORA_VERSION
    except json.JSONDecodeError:
        return False


__all__ = ["ADAPTERS", "build_skill_lora_zoo", "lora_zoo_ready"]
