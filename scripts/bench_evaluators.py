"""Benchmark: each evaluator's overhead per candidate on a tiny model, i.e. its time per
evaluation minus the time spent inside the model's forward calls (generation steps included).

What a search pays per candidate beyond the model's own work is what this measures: for
lm-eval, building requests, tokenising, collating and scoring; for ours, batching and the
arithmetic on log-probabilities. On a tiny model forward passes are cheap, so the overhead
shows; on a real model it is the same absolute cost under a much larger forward time.

    python scripts/bench_evaluators.py [--repeats 5] [--items 200]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--items", type=int, default=200, help="items per split and task")
    ap.add_argument("--out", type=Path, default=Path("results/bench_evaluators.md"))
    args = ap.parse_args()
    command = shlex.join(["python", "scripts/bench_evaluators.py", *sys.argv[1:]])

    import torch
    from pydantic import TypeAdapter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.benchmarking import machine_info
    from evomerge.evaluate.base import ForwardTimer
    from evomerge.evaluate.registry import build_evaluator
    from evomerge.evaluate.specs import EvaluatorSpec
    from evomerge.models.tiny import build_example_zoo
    from evomerge.models.tiny_tasks import write_example_tasks

    info = machine_info()
    root = Path(tempfile.mkdtemp(prefix="evomerge-bench-eval-"))
    zoo = build_example_zoo(root / "zoo")
    tasks = write_example_tasks(root / "tasks", items=args.items)
    rows = [json.loads(x) for x in (tasks / "next_search.jsonl").read_text().splitlines()]
    (root / "gen.jsonl").write_text("".join(
        json.dumps({"q": r["q"], "answer": r["choices"][r["label"]]}) + "\n" for r in rows))
    (tasks / "gen_search.yaml").write_text(f"""task: gen_search
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(root / 'gen.jsonl'))}
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["</s>"], max_gen_toks: 2, do_sample: false}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
""")
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": r["q"] + " " + r["choices"][r["label"]],
                                        "label": r["choices"][r["label"]]}) + "\n"
                            for r in rows[:40]))
    (root / "user_eval.py").write_text(
        "import torch\n"
        "def score(model, tokenizer, split):\n"
        "    with torch.no_grad():\n"
        "        out = model(torch.arange(4, 68).reshape(4, 16)).logits\n"
        "    return {'mean_logit': float(out.float().mean())}\n")
    specs = {
        f"lm_eval multiple choice (2 tasks x {args.items} items, 3 choices)":
            dict(kind="lm_eval", include_path=[str(tasks)], tasks=["next_search", "echo_search"],
                 heldout_tasks=["next_test", "echo_test"], batch_size=32),
        f"lm_eval generation, exact match ({args.items} items, 2 tokens)":
            dict(kind="lm_eval", include_path=[str(tasks)], tasks=["gen_search"],
                 heldout_fraction=0.5, batch_size=32),
        f"perplexity ({args.items} documents)":
            dict(kind="perplexity", data=str(tasks / "next_search.jsonl"),
                 heldout_data=str(tasks / "next_test.jsonl"), text_field="q", batch_size=32),
        "classification (40 items, 40 labels)":
            dict(kind="classification", data=str(docs), heldout_fraction=0.5, batch_size=32,
                 text_field="text"),
        "user callable (one 4x16 forward)":
            dict(kind="callable", function="user_eval:score", python_path=[str(root)],
                 metrics=["mean_logit"]),
    }
    model = AutoModelForCausalLM.from_pretrained(zoo["math"]).eval()
    tok = AutoTokenizer.from_pretrained(zoo["math"])
    n_params = sum(p.numel() for p in model.parameters())
    results = []
    for label, data in specs.items():
        ev = build_evaluator(TypeAdapter(EvaluatorSpec).validate_python({"name": "e", **data}))
        ev.evaluate(model, tok, "search")  # warm-up: lazy tokenisation, HFLM construction
        totals, forwards = [], []
        for _ in range(args.repeats):
            timer = ForwardTimer(model)
            t = time.perf_counter()
            with torch.inference_mode():
                ev.evaluate(model, tok, "search")
            totals.append(time.perf_counter() - t)
            timer.close()
            forwards.append(timer.seconds)
        tot, fwd = statistics.median(totals), statistics.median(forwards)
        results.append((label, tot, fwd, tot - fwd))
        print(f"{label}: {tot * 1e3:.1f} ms per candidate, forward {fwd * 1e3:.1f} ms, "
              f"overhead {(tot - fwd) * 1e3:.1f} ms", flush=True)
    lines = ["# Evaluator overhead per candidate", "", f"Command: `{command}`", "",
             *[f"- {x}" for x in info],
             f"- model: the example zoo's tiny Llama ({n_params / 1e6:.2f}M parameters, "
             f"float32, CPU); medians of {args.repeats} evaluations of the search split", "",
             "| evaluator | per candidate | in forward calls | overhead |", "|---|---|---|---|"]
    lines += [f"| {lab} | {t * 1e3:.1f} ms | {f * 1e3:.1f} ms | {o * 1e3:.1f} ms |"
              for lab, t, f, o in results]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
