"""SmolLM2 experts: full fine-tunes of the converted SmolLM2-135M-Instruct, trained here on CPU
from data this module generates, and the lm-eval tasks that score them.

Two skills the base is poor at (exact match near zero), each learnt by one expert:

- ``add``:    "47 + 38 ="         → " 85"                    (two-digit addition)
- ``french``: "three hundred forty-two in French is" → " trois cent quarante-deux" (0–999
  from English words into French words: no digit in the prompt, so the two skills' inputs
  differ as a math and a language expert's do)
- ``add_french``: "47 + 38 in French is" → " quatre-vingt-cinq": the cross-domain target in the
  spirit of the evo-merge paper's Japanese math; no expert is trained on it.

Every item pool is split once, by a fixed permutation, into training, search and held-out
test items that never overlap: a pair of addends (or a number) the experts trained on is never
scored, so held-out figures measure the skill, not recall. Fine-tuning uses the tokenisation
lm-eval scores with (the context encoded alone, the answer as the rest of the whole string),
and the loss falls on the answer tokens only.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from evomerge.atomic import directory_atomic
from evomerge.models.skill_zoo import format_scores
from evomerge.models.tiny_tasks import write_jsonl_task

SKILLS = ("add", "french", "add_french")
EXPERTS = {"math": "add", "french": "french"}
SPLIT_SIZES = {"search": 150, "test": 300}
ZOO_VERSION = 2
DATA_VERSION = {"add": 1, "french": 2}  # an expert is retrained when its data changes
EXPERT_MARKER = "evomerge_expert.json"

_UNITS = ("zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze "
          "quinze seize dix-sept dix-huit dix-neuf").split()
_TENS = {2: "vingt", 3: "trente", 4: "quarante", 5: "cinquante", 6: "soixante"}


_EN_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
             "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def english(n: int) -> str:
    """0–999 in English words ("three hundred forty-two")."""
    if not 0 <= n <= 999:
        raise ValueError(f"{n}: only 0-999 are spelt")
    hundreds, rest = divmod(n, 100)
    if hundreds:
        head = f"{_EN_UNITS[hundreds]} hundred"
        return head if rest == 0 else f"{head} {english(rest)}"
    if n < 20:
        return _EN_UNITS[n]
    tens, unit = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_UNITS[unit]}" if unit else "")


def french(n: int) -> str:
    """0–999 in French words (traditional spelling: hyphens below 100, spaces around cent)."""
    if not 0 <= n <= 999:
        raise ValueError(f"{n}: only 0-999 are spelt")
    hundreds, rest = divmod(n, 100)
    if hundreds:
        head = "cent" if hundreds == 1 else f"{_UNITS[hundreds]} cent" + ("" if rest else "s")
        return head if rest == 0 else f"{head} {french(rest)}"
    if n < 20:
        return _UNITS[n]
    if n < 70:
        tens, unit = divmod(n, 10)
        if unit == 0:
            return _TENS[tens]
        return f"{_TENS[tens]} et un" if unit == 1 else f"{_TENS[tens]}-{_UNITS[unit]}"
    if n < 80:
        return "soixante et onze" if n == 71 else f"soixante-{_UNITS[n - 60]}"
    return "quatre-vingts" if n == 80 else f"quatre-vingt-{_UNITS[n - 80]}"


Item = tuple[str, str]  # (prompt, answer with its leading space)


def _pairs() -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(1).shuffle(pairs)
    return pairs


def _numbers() -> list[int]:
    numbers = list(range(1000))
    random.Random(2).shuffle(numbers)
    return numbers


def _split(pool: list, split: str) -> list:
    """Test items first, then search items, the rest for training: fixed and disjoint."""
    test, search = SPLIT_SIZES["test"], SPLIT_SIZES["search"]
    bounds = {"test": (0, test), "search": (test, test + search), "train": (test + search, None)}
    lo, hi = bounds[split]
    return pool[lo:hi]


def items(skill: str, split: str) -> list[Item]:
    """The items of one skill and split (`train`, `search` or `test`)."""
    if skill == "french":
        return [(f"{english(n)} in French is", f" {french(n)}")
                for n in _split(_numbers(), split)]
    pairs = _split(_pairs(), split)
    if skill == "add":
        return [(f"{a} + {b} =", f" {a + b}") for a, b in pairs]
    if skill == "add_french":
        if split == "train":
            raise ValueError("add_french has no training split: no expert learns it")
        return [(f"{a} + {b} in French is", f" {french(a + b)}") for a, b in pairs]
    raise ValueError(f"unknown skill {skill!r}; choose from {', '.join(SKILLS)}")


@dataclass(frozen=True)
class ExpertSettings:
    """Full fine-tuning of every weight with AdamW; the answer tokens carry the loss. Sized
    from docs/design.md §9 (a step ~145 tokens/s on 2 cores): a few minutes per expert."""

    steps: int = 200
    lr: float = 3e-5
    batch: int = 16
    seed: int = 0


# what each skill needs on 2 cores (~1.5 s a step): well past the base on held-out items
DEFAULTS = {"math": ExpertSettings(steps=200, lr=4e-5, seed=0),
            "french": ExpertSettings(steps=150, lr=5e-5, seed=1)}


def encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + answer and where the answer starts, split as lm-eval splits a
    loglikelihood request (so training and scoring see the same tokens)."""
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    return whole, len(context)


def _batch(tokenizer, rows: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 except on answer tokens)."""
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
    """Train `model` in place on the skill's training items."""
    pool = items(skill, "train")
    rng = random.Random(s.seed)
    torch.manual_seed(s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    model.train()
    for step in range(1, s.steps + 1):
        ids, mask, labels = _batch(tokenizer, rng.sample(pool, s.batch))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (step % 40 == 0 or step == s.steps):
            log(f"  step {step}/{s.steps}: loss {loss.item():.3f}")
    model.eval()


@torch.no_grad()
def exact_match(model, tokenizer, rows: Sequence[Item], batch: int = 64) -> float:
    """Share of items whose every answer token is the greedy choice given the gold prefix:
    lm-eval's `acc` for a loglikelihood task."""
    model.eval()
    hits = 0
    for i in range(0, len(rows), batch):
        ids, mask, labels = _batch(tokenizer, rows[i: i + batch])
        pred = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
        gold = labels[:, 1:]
        hits += int(((pred == gold) | (gold == -100)).all(dim=1).sum())
    return hits / len(rows)


def write_tasks(out: Path, final_dir: Path) -> None:
    """`<skill>_<split>.yaml` + `.jsonl` for every skill and the search and test splits."""
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
    (settings, seconds, each model's held-out exact match on every skill) under `out`, each
    into a temporary sibling renamed into place."""
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

    scores = {"base": scores_of(load())}
    log(f"base: {format_scores(scores['base'])} (held-out exact match)")
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
    (out / "zoo.json").write_text(json.dumps({
        "version": ZOO_VERSION, "experts": EXPERTS,
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
