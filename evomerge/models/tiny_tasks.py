"""lm-eval task files for the example zoo: two multiple-choice skills over its word-level
vocabulary (w0, w1, …), each with a search split and a held-out test split.

- ``next``: continue a counting run, "w5 w6 w7" → "w8";
- ``echo``: close a repeated pattern, "w3 w9 w4 w3 w9" → "w4".

The YAMLs carry absolute data-file paths: lm-eval resolves `data_files` against the current
directory, not the YAML's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SKILLS = ("next", "echo")
SPLITS = ("search", "test")


def _item(skill: str, rng: np.random.Generator, vocab: int) -> dict:
    if skill == "next":
        a = int(rng.integers(4, vocab - 8))
        q, gold = f"w{a} w{a + 1} w{a + 2}", f"w{a + 3}"
    else:
        a, b, c = (int(x) for x in rng.choice(np.arange(4, vocab - 4), 3, replace=False))
        q, gold = f"w{a} w{b} w{c} w{a} w{b}", f"w{c}"
    wrong: list[str] = []
    while len(wrong) < 2:
        w = f"w{int(rng.integers(4, vocab - 4))}"
        if w != gold and w not in wrong:
            wrong.append(w)
    label = int(rng.integers(3))
    choices = wrong[:label] + [gold] + wrong[label:]
    return {"q": q, "choices": choices, "label": label}


def write_example_tasks(out: str | Path, vocab_size: int = 512, items: int = 100,
                        seed: int = 0) -> Path:
    """Write `<skill>_<split>.jsonl` and `.yaml` for every skill and split; returns `out`."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for skill in SKILLS:
        for split in SPLITS:
            name = f"{skill}_{split}"
            rows = [_item(skill, rng, vocab_size) for _ in range(items)]
            write_jsonl_task(out, out, name, rows,
                             "output_type: multiple_choice\n"
                             'doc_to_text: "{{q}}"\n'
                             'doc_to_choice: "{{choices}}"\n'
                             "doc_to_target: label\n")
    return out


def write_jsonl_task(out: Path, where: Path, name: str, rows: list[dict], body: str) -> None:
    """`name.jsonl` and an lm-eval task `name.yaml` scoring it by `acc`; `body` holds the
    output type and the doc_to_* lines. The YAML names the data by its absolute path under
    `where` (lm-eval resolves `data_files` against the current directory)."""
    (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(where / (name + '.jsonl')))}\n"
        "test_split: test\n"
        + body +
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n")
