"""Benchmark: one search candidate built in place against the path a naive search takes.

On the 3-source ~100M-parameter bf16 family of `bench_merge.py` (cached, shared with it):

- in place: `CandidateBuilder.build(recipe)` — sources resident, the merged weights copied into
  the one live transformers model (median of --repeats builds, after one warm-up), with the
  selection cache (the default) and without it; the first cached build, which fills the
  cache, is reported on its own;
- naive, whole process: `evomerge merge RECIPE OUT` in a fresh process (what a search that
  shells out per candidate pays: start-up, imports, merge, shards written) plus
  `AutoModelForCausalLM.from_pretrained(OUT)` in this process;
- naive, in process: `merge_to_directory` + `from_pretrained` (no start-up, still the disk);
- the bandwidth floor: the bytes a candidate touches (sources read once + weights written
  once) over a copy bandwidth measured in the same run.

    python scripts/bench_candidate.py [--repeats 3] [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evomerge import benchmarking as bm  # the zoo, recipes and machine facts bench_merge uses

NOTE = """
Reading the table: linear is memory-bound, so dropping the disk, the process start and the
model load leaves the merge itself. TIES and DARE-TIES are compute-bound on this CPU: without
the cache each candidate runs two histogram passes over every task vector for its exact top-k
threshold (TIES) or draws a uniform per entry (DARE), as `evomerge merge` does. The selection
cache keeps, per source and tensor, |tau|'s bit patterns sorted (any density's threshold is
then a binary search) and DARE's draws for the space's seed (4 bytes per entry per source,
bounded by half the memory available), so a candidate pays one merge pass; the first
candidate pays for filling it ("first build"). The weights are bit-identical with and
without the cache (tests/test_inplace.py). The floor counts the sources, base and output
bytes once; the cache's own reads are not in it.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="a tiny model, for a smoke run")
    ap.add_argument("--zoo", type=Path,
                    default=Path(tempfile.gettempdir()) / f"evomerge-bench-zoo-v{bm.ZOO_VERSION}")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown report (default results/bench_candidate.md; none for --quick)")
    args = ap.parse_args()
    out_md = args.out or (None if args.quick else Path("results/bench_candidate.md"))
    command = shlex.join(["python", "scripts/bench_candidate.py", *sys.argv[1:]])

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from evomerge.merge.directory import merge_to_directory
    from evomerge.merge.inplace import CandidateBuilder
    from evomerge.merge.options import MergeOptions
    from evomerge.recipe_file import load_recipe

    hf_logging.disable_progress_bar()
    info = bm.machine_info()
    for line in info:
        print(line)
    model = bm.QUICK if args.quick else bm.FULL
    n_params = bm.count_params(model)
    print(f"model: {n_params / 1e6:.1f}M parameters per model, bf16, base + 3 sources")
    zoo = bm.build_zoo(args.zoo, model, "quick" if args.quick else "full")
    bandwidth = bm.copy_bandwidth()
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s", flush=True)
    evomerge = str(Path(sys.executable).parent / "evomerge")
    work = Path(tempfile.mkdtemp(prefix="evomerge-bench-cand-"))
    rows = []
    try:
        recipes = bm.write_recipes(zoo, work)
        refs = (str(zoo["base"]), [str(zoo[v]) for v in bm.VARIANTS])
        cached = CandidateBuilder(*refs, dtype="bfloat16", device=args.device)
        uncached = CandidateBuilder(*refs, dtype="bfloat16", device=args.device, cache_bytes=0)

        def builds(builder: CandidateBuilder, recipe) -> list[float]:
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                builder.build(recipe)
                times.append(time.perf_counter() - t)
            return times

        for method in bm.METHODS:
            # the recipe as evomerge reads it (sources resolved the same way)
            recipe = load_recipe(recipes[method])
            t = time.perf_counter()
            cached.build(recipe)  # fills the cache (and warms up)
            first = time.perf_counter() - t
            inplace = builds(cached, recipe)
            uncached.build(recipe)  # warm-up
            plain = builds(uncached, recipe)
            whole, inproc = [], []
            for i in range(args.repeats + 1):
                out = work / f"{method}-{i}"
                t = time.perf_counter()
                subprocess.run([evomerge, "merge", str(recipes[method]), str(out),
                                "--no-progress"], check=True, capture_output=True)
                AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
                if i:
                    whole.append(time.perf_counter() - t)
                shutil.rmtree(out)
                t = time.perf_counter()
                merge_to_directory(recipe, out, MergeOptions(device=args.device))
                AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
                if i:
                    inproc.append(time.perf_counter() - t)
                shutil.rmtree(out)
            inputs = list(bm.VARIANTS) + ([] if method == "linear" else ["base"])
            touched = sum(bm.weight_bytes(zoo[k]) for k in inputs) + bm.weight_bytes(zoo["a"])
            floor = touched / bandwidth
            row = (method, statistics.median(inplace), statistics.median(whole),
                   statistics.median(inproc), floor, statistics.median(plain), first)
            rows.append(row)
            print(f"{method}: in place {row[1]:.3f} s (no cache {row[5]:.3f} s, first build "
                  f"{first:.3f} s), evomerge merge + load {row[2]:.3f} s "
                  f"({row[2] / row[1]:.1f}x), in-process merge + load {row[3]:.3f} s "
                  f"({row[3] / row[1]:.1f}x), floor {floor:.3f} s ({row[1] / floor:.1f}x)",
                  flush=True)
        cache_mb = cached.cache.used / 2**20
        print(f"selection cache: {cache_mb:.0f} MiB of {cached.cache.budget / 2**20:.0f} MiB "
              f"allowed, {cached.cache.refused} entries refused")
        cached.close()
        uncached.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if out_md:
        lines = [
            "# In-place candidates against disk + load", "",
            f"Command: `{command}`", "",
            *[f"- {x}" for x in info],
            f"- model: {n_params / 1e6:.1f}M parameters per model, bf16, base + 3 sources; "
            f"device {args.device}; copy bandwidth {bandwidth / 1e9:.1f} GB/s",
            f"- medians of {args.repeats} runs each (one warm-up); sources in the page cache",
            f"- selection cache after all methods: {cache_mb:.0f} MiB "
            f"({cached.cache.refused} entries refused)", "",
            "| method | in place | no cache | first build | `evomerge merge` process + "
            "`from_pretrained` | speed-up | in-process merge to disk + `from_pretrained` | "
            "speed-up | bandwidth floor | in place / floor |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m, ip, wh, pr, fl, pl, fi in rows:
            lines.append(f"| {m} | {ip:.3f} s | {pl:.3f} s | {fi:.3f} s | {wh:.3f} s | "
                         f"**{wh / ip:.1f}x** | {pr:.3f} s | {pr / ip:.1f}x | {fl:.3f} s | "
                         f"{ip / fl:.1f}x |")
        out_md.write_text("\n".join(lines) + "\n" + NOTE)
        print(f"wrote {out_md}")


if __name__ == "__main__":
    main()
