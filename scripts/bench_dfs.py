"""Benchmark: a data-flow (routed) candidate against a parameter-space candidate.

On the example zoo (`evomerge build-zoo`, built here in a temporary folder), through the very
worker a search runs (`MergeTask.worker().evaluate`, lm-eval on the zoo's two search tasks):

- PS: a TIES recipe over math and code with the base, built in place (`CandidateBuilder`);
- DFS: routes over math and code decoded from random genomes of the data-flow space
  (repeats 3, pair scales), built by re-pointing the routed skeleton (`RouteBuilder`).

For each, the median build and evaluation seconds over --candidates candidates (after one
warm-up), and for the routes the median hop count (evaluation time grows with it). Memory:
the bytes the routed model holds beyond the resident sources (tensors whose storage is not a
source's) against the bytes of the same route materialised as a stock checkpoint, and the
process RSS growth of building the longest route against loading its exported copy (every
weight touched, since safetensors maps the file lazily).

    python scripts/bench_dfs.py [--sizes tiny,small] [--candidates 20]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml

NOTE = """
Reading the table: a routed candidate costs no weight arithmetic (the skeleton's hops are
re-pointed at the resident sources' tensors), so its build time is bookkeeping, while a PS
candidate writes every merged tensor. Evaluation time follows the route's length: DFS routes
over two models with three repeats run more layers than either source. The routed model owns
no weight of its own (0 bytes beyond the sources: the test suite checks storage pointers);
a stock copy of the same route costs one layer's tensors per hop plus embeddings and head.
RSS growth is the process-level view of the same comparison (noisy at the tiny size).
"""


def evaluator_config(zoo: Path, space: dict, base: bool) -> dict:
    task = {
        "kind": "merge", "sources": [str(zoo / "math"), str(zoo / "code")], "space": space,
        "candidate": {"dtype": "float32"},
        "evaluators": [{"name": "skills", "kind": "lm_eval",
                        "include_path": [str(zoo / "tasks")],
                        "tasks": ["next_search", "echo_search"],
                        "heldout_tasks": ["next_test", "echo_test"], "batch_size": 32}],
        "objectives": [{"name": "next", "metric": "next_search/acc"},
                       {"name": "echo", "metric": "echo_search/acc"}],
    }
    if base:
        task["base"] = str(zoo / "base")
    return {"name": "bench", "budget": 1, "task": task, "controller": {"kind": "random"}}


def load_task(cfg: dict, folder: Path):
    from evomerge.search_config import load_config
    from evomerge.tasks.registry import build_task

    path = folder / f"{cfg['task']['space']['kind']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return build_task(load_config(path), str(path))


def time_candidates(task, genomes: list[np.ndarray]) -> tuple[float, float]:
    worker = task.worker()
    worker.evaluate(task.decode(genomes[0]), "search")  # warm-up
    build, evaluate = [], []
    for g in genomes:
        _, _, extra = worker.evaluate(task.decode(g), "search")
        build.append(extra["build_seconds"])
        evaluate.append(extra["eval_seconds"])
    return statistics.median(build), statistics.median(evaluate)


def rss() -> int:
    return psutil.Process().memory_info().rss


def bench(size: str, candidates: int, folder: Path) -> dict:
    from evomerge.merge.directory import merge_to_directory
    from evomerge.merge.options import MergeOptions
    from evomerge.merge.route_export import materialised_bytes
    from evomerge.merge.routing import RoutePlan
    from evomerge.merge.sources import open_models
    from evomerge.models.tiny import build_example_zoo

    zoo = folder / f"zoo-{size}"
    build_example_zoo(zoo, size)
    rng = np.random.default_rng(0)
    ps = load_task(evaluator_config(zoo, {"kind": "ps", "method": "ties", "groups": 2}, True),
                   folder)
    ps_genomes = [rng.uniform(ps.space.lower, ps.space.upper) for _ in range(candidates)]
    ps_build, ps_eval = time_candidates(ps, ps_genomes)
    ps.worker().close()
    dfs = load_task(evaluator_config(zoo, {"kind": "dfs", "repeats": 3}, False), folder)
    sp = dfs.space
    # indicators on with probability 1/2, scales around 1: routes of every length
    genomes = [np.concatenate([rng.uniform(-1, 1, sp.T), rng.uniform(0.8, 1.2, sp.n_scales)])
               for _ in range(candidates)]
    hops = [len(sp.route(g)) for g in genomes]
    dfs_build, dfs_eval = time_candidates(dfs, genomes)
    builder = dfs.worker().builder
    longest = dfs.decode(genomes[int(np.argmax(hops))])
    before = rss()
    model = builder.build(longest)
    routed_rss = rss() - before
    resident = {t.untyped_storage().data_ptr() for s in builder.tensors for t in s.values()}
    owned = sum(t.numel() * t.element_size() for t in model.parameters()
                if t.untyped_storage().data_ptr() not in resident)
    _, models = open_models(longest, MergeOptions())
    copy_bytes = materialised_bytes(RoutePlan(longest, models), torch.float32)
    out = folder / f"routed-{size}"
    merge_to_directory(longest, out, MergeOptions(overwrite=True))
    from transformers import AutoModelForCausalLM

    before = rss()
    copy = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for p in copy.parameters():  # safetensors maps the file: touch every page
        float(p.sum())
    copy_rss = rss() - before
    del copy
    params = sum(e.numel for e in models[0].entries.values())
    return {"size": size, "params": params, "layers": sp.layers[0],
            "ps_build": ps_build, "ps_eval": ps_eval, "dfs_build": dfs_build,
            "dfs_eval": dfs_eval, "hops": statistics.median(hops), "longest": max(hops),
            "owned": owned, "copy_bytes": copy_bytes, "routed_rss": routed_rss,
            "copy_rss": copy_rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("results/dfs.md"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    command = shlex.join(["python", "scripts/bench_dfs.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(s, args.candidates, Path(tmp)) for s in args.sizes.split(",")]
    ms = 1e3
    lines = [
        "# Routed (DFS) candidates against parameter-space candidates", "",
        f"Command: `{command}` (2 CPU cores, torch {torch.__version__}, float32).", "",
        "| zoo | params / model | layers / model | PS build | PS evaluate | DFS build "
        "| DFS evaluate | DFS hops (median, max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['layers']} "
            f"| {r['ps_build'] * ms:.1f} ms | {r['ps_eval'] * ms:.0f} ms "
            f"| {r['dfs_build'] * ms:.2f} ms | {r['dfs_eval'] * ms:.0f} ms "
            f"| {r['hops']:.0f}, {r['longest']} |")
    lines += ["", "Memory of the longest route:", "",
              "| zoo | hops | routed: bytes beyond the sources | materialised copy: bytes "
              "| RSS growth: build route | RSS growth: load the copy |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['longest']} | {r['owned']} B | {r['copy_bytes'] / 2**20:.2f} MiB "
            f"| {r['routed_rss'] / 2**20:.2f} MiB | {r['copy_rss'] / 2**20:.2f} MiB |")
    text = "\n".join(lines) + "\n" + NOTE
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
