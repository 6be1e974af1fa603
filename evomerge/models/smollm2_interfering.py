"""A second SmolLM2 zoo (kind `smollm2_mix`) whose experts interfere, as real fine-tunes do.

The first zoo (`smollm2_experts`, kind `smollm2`) trains experts on disjoint inputs: sums of
digits, and English words into French words. Their task vectors barely touch, so plain task
arithmetic at weight 1 is already as good as the experts and a search has nothing to win.
Here every expert's prompts carry digits and the two spelling experts share one template, so
their task vectors move the same weights in different directions:

- ``add``:     "47 + 38 ="          → " 85"                       (two-digit addition)
- ``french``:  "342 in French is"   → " trois cent quarante-deux" (0–999, digits into French)
- ``english``: "342 in English is"  → " three hundred forty-two"  (0–999, digits into English)
- ``add_fr``:  "quarante-sept plus trente-huit =" → " 85": the cross-lingual target in the
  evo-merge paper's spirit (a question posed in French whose answer does not depend on
  French); no expert is trained on it.

Every item pool is split once, by a seeded permutation, into test, search, validation and
training items that never overlap (the target has no training split): a number or a pair of
addends an expert trained on is never scored. Training and scoring reuse `smollm2_experts`'
tokenisation (`encode`), settings (`ExpertSettings`) and exact match (`exact_match`), so the
two zoos' figures mean the same thing; the old module is left as it is, its zoo reproducible.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from evomerge.atomic import directory_atomic, write_text_atomic
from evomerge.models.skill_zoo import format_scores
from evomerge.models.smollm2_experts import (
    ExpertSettings,
    Item,
    encode,
    english,
    exact_match,
    french,
)
from evomerge.models.tiny_tasks import write_jsonl_task

SKILLS = ("add", "french", "english", "add_fr")
EXPERTS = {"math": "add", "french": "french", "english": "english"}  # expert → its skill
TARGET = "add_fr"
SPLITS = ("test", "search", "validation", "train")  # the order they are cut from a pool
SPLIT_SIZES = {"search": 150, "validation": 150, "test": 300}  # train: the rest
ZOO_VERSION = 1
DATA_VERSION = {"add": 1, "french": 1, "english": 1}  # an expert is retrained when its data changes
EXPERT_MARKER = "evomerge_expert.json"

# sized for 2 cores (~1.5 s a step at batch 16, longer for the spelt answers): the math
# expert as in the first zoo; the spelling ones, fewer steps at a higher rate
DEFAULTS = {"math": ExpertSettings(steps=200, lr=4e-5, seed=0),
            "french": ExpertSettings(steps=80, lr=1e-4, seed=1),
            "english": ExpertSettings(steps=50, lr=1e-4, seed=2)}
BASE_SCORES = "base_scores.json"  # the base's test scores, kept so a resumed build skips them


def _pairs() -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(11).shuffle(pairs)
    return pairs


def _numbers() -> list[int]:
    numbers = list(range(1000))
    random.Random(12).shuffle(numbers)
    return numbers


def _split(pool: list, split: str) -> list:
    """Test, search and validation items first, the rest for training: fixed and disjoint."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    lo = 0
    for name in SPLITS:
        hi = lo + SPLIT_SIZES[name] if name in SPLIT_SIZES else None
        if name == split:
            return pool[lo:hi]
        lo = hi or 0
    raise AssertionError(split)


def items(skill: str, split: str) -> list[Item]:
    """The items of one skill and split (`train`, `search`, `validation` or `test`)."""
    if skill in ("french", "english"):
        spell = french if skill == "french" else english
        language = skill.capitalize()
        return [(f"{n} in {language} is", f" {spell(n)}") for n in _split(_numbers(), split)]
    if skill == "add":
        return [(f"{a} + {b} =", f" {a + b}") for a, b in _split(_pairs(), split)]
    if skill == TARGET:
        if split == "train":
            raise ValueError(f"{TARGET} has no training split: no expert learns it")
        return [(f"{french(a)} plus {french(b)} =", f" {a + b}")
                for a, b in _split(_pairs(), split)]
    raise ValueError(f"unknown skill {skill!r}; choose from {', '.join(SKILLS)}")


def batch_of(tokenizer, rows: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 except on answer tokens): the few
    lines of `smollm2_experts._batch`, copied so that module keeps its private helpers."""
    encoded = [encode(tokenizer, q, a) for q, a in rows]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (seq, start) in enumerate(encoded):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, start: len(seq)] = torch.tensor(seq[start:])
    return ids, mask, labels


def fine_tune(model, tokenizer, skill: str, s: ExpertSettings,
              log: Callable[[str], None] | None = None) -> None:
    """Train `model` in place on the skill's training items: every weight, AdamW, the loss on
    the answer tokens (as `smollm2_experts.fine_tune`, on this module's items)."""
    pool = items(skill, "train")
    rng = random.Random(s.seed)
    torch.manual_seed(s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    model.train()
    for step in range(1, s.steps + 1):
        ids, mask, labels = batch_of(tokenizer, rng.sample(pool, s.batch))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (step % 40 == 0 or step == s.steps):
            log(f"  step {step}/{s.steps}: loss {loss.item():.3f}")
    model.eval()


def write_tasks(out: Path, final_dir: Path) -> None:
    """`<skill>_<split>.yaml` + `.jsonl` for every skill and the search, validation and test
    splits, scored as lm-eval's loglikelihood `acc` (every answer token the greedy choice)."""
    out.mkdir(parents=True, exist_ok=True)
    for skill in SKILLS:
        for split in SPLIT_SIZES:
            rows = [{"q": q, "a": a} for q, a in items(skill, split)]
            write_jsonl_task(out, final_dir.resolve(), f"{skill}_{split}", rows,
                             "output_type: loglikelihood\n"
                             'doc_to_text: "{{q}}"\n'
                             # lm-eval puts no delimiter before a loglikelihood target
                             'doc_to_target: "{{a}}"\n')


def build_experts(out: str | Path, base: Path, settings: dict[str, ExpertSettings] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Path]:
    """Fine-tune every expert from `base` and write them, the lm-eval tasks and `zoo.json`
    (settings, seconds, each model's exact match on every skill's test split) under `out`,
    each expert into a temporary sibling renamed into place; finished experts are reused."""
    # transformers takes seconds to import: only a build pays for it, not the config and test
    # modules that import this one for its skills and items
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out)
    chosen = settings or DEFAULTS
    tokenizer = AutoTokenizer.from_pretrained(base)
    tests = {skill: items(skill, "test") for skill in SKILLS}
    start = time.perf_counter()

    def scores_of(model) -> dict[str, float]:
        return {skill: exact_match(model, tokenizer, rows) for skill, rows in tests.items()}

    def load():
        return LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)

    # the base's scores, kept across an interrupted build while the test items are the same
    digest = hashlib.sha256(json.dumps(tests).encode()).hexdigest()[:16]
    cached = _read_json(out / BASE_SCORES) or {}
    if cached.get("items") == digest:
        scores = {"base": cached["exact_match_test"]}
    else:
        scores = {"base": scores_of(load())}
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / BASE_SCORES, json.dumps(
            {"items": digest, "exact_match_test": scores["base"]}, indent=2) + "\n")
    log(f"base: {format_scores(scores['base'])} (test exact match)")
    seconds: dict[str, float] = {}
    for name, skill in EXPERTS.items():
        if name not in chosen:
            continue
        marker = out / name / EXPERT_MARKER
        wanted = {"data": DATA_VERSION[skill], "skill": skill,
                  "settings": asdict(chosen[name])}
        done = _read_json(marker)
        if done and {k: done.get(k) for k in wanted} == wanted:  # an interrupted build resumes
            scores[name], seconds[name] = done["exact_match_test"], done["train_seconds"]
            log(f"{name}: reusing {out / name}")
            continue
        t = time.perf_counter()
        model = load()
        log(f"fine-tuning the {name} expert on {skill} ({chosen[name].steps} steps)")
        fine_tune(model, tokenizer, skill, chosen[name], log)
        seconds[name] = round(time.perf_counter() - t, 1)
        scores[name] = scores_of(model)
        with directory_atomic(out / name) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / EXPERT_MARKER).write_text(json.dumps(
                wanted | {"exact_match_test": scores[name], "train_seconds": seconds[name]},
                indent=2) + "\n")
        log(f"{name} ({seconds[name]:.0f} s): {format_scores(scores[name])}")
    write_tasks(out / "tasks", out / "tasks")
    write_text_atomic(out / "zoo.json", json.dumps({  # last: the mark of a finished zoo
        "version": ZOO_VERSION, "experts": EXPERTS, "target": TARGET,
        "split_sizes": SPLIT_SIZES,
        "settings": {k: asdict(v) for k, v in chosen.items()},
        "exact_match_test": scores, "train_seconds": seconds,
        "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    return {"base": base, **{n: out / n for n in chosen}, "tasks": out / "tasks"}


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def experts_ready(out: str | Path) -> bool:
    """A finished zoo of this version is there."""
    return (_read_json(Path(out) / "zoo.json") or {}).get("version") == ZOO_VERSION
