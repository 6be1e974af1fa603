"""Benchmark: asynchronous against generational CMA-ES at equal evaluations.

Runs the synthetic task (a smooth score, optimum 1.0; log-normal evaluation times) or the
digits task (an MLP's 19,210 weights from scratch, separable CMA-ES as in
configs/digits_scratch_cmaes.yaml; log-normal times drawn by the executor) on the
simulated executor (docs/design.md §8: N workers on a discrete-event clock, nothing sleeps,
the same order on every machine), for N = --workers, --seeds seeds, both rules, the same
budget. Reports per N: steady-state utilisation, the virtual time the budget takes, and the
final regret (1 - best score, or 1 - best search accuracy) with the seed-paired difference
of log10 regret (async minus generational; negative: async closer to the optimum) and its
standard error.

    python scripts/bench_async_cmaes.py [--task synthetic|digits] [--workers 2 8] [--seeds 10]
                                        [--budget 400]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

TASKS = {
    "synthetic": ({"controller": {"kind": "cmaes"}}, "score"),
    "digits": ({"controller": {"kind": "cmaes", "separable": True, "sigma0": 0.01,
                               "step_size": "csa"},
                "task": {"kind": "digits", "init": "scratch", "init_sigma": 0.01}},
               "accuracy"),
}


def one(work: Path, args: argparse.Namespace, workers: int, seed: int, asynchronous: bool
        ) -> dict[str, float]:
    from evomerge.benchmarking import worker_utilisation
    from evomerge.run.search_run import SearchRun

    name = f"{workers}-{seed}-{'async' if asynchronous else 'gen'}"
    base, objective = TASKS[args.task]
    executor: dict = {"kind": "simulated", "workers": workers}
    if args.task == "synthetic":
        task = {"kind": "synthetic", "dimension": args.dimension, "median_seconds": 1.0,
                "tail": args.tail}
    else:
        task = base["task"]
        executor.update(median_seconds=1.0, tail=args.tail)
    cfg = work / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": name, "seed": seed, "budget": args.budget, "checkpoint_every": 500,
        "controller": {**base["controller"], "asynchronous": asynchronous},
        "executor": executor, "task": task}))
    SearchRun.create(cfg, work / name).run()
    lines = [json.loads(x) for x in (work / name / "trials.jsonl").read_text().splitlines()]
    best = max(x["objectives"][objective] for x in lines if x["status"] == "ok")
    return {"regret": max(1.0 - best, 1e-12), "util": worker_utilisation(lines, workers)[0],
            "span": max(x["started"] + x["seconds"] for x in lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="synthetic")
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=400)
    ap.add_argument("--dimension", type=int, default=8)
    ap.add_argument("--tail", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=None,
                    help="default: results/bench_async_cmaes.md (synthetic) or "
                         "results/bench_async_cmaes_digits.md")
    args = ap.parse_args()
    command = shlex.join(["python", "scripts/bench_async_cmaes.py", *sys.argv[1:]])
    out = args.out or Path("results/bench_async_cmaes"
                           + ("" if args.task == "synthetic" else "_digits") + ".md")
    from evomerge.benchmarking import machine_info, write_results

    work = Path(tempfile.mkdtemp(prefix="evomerge-bench-async-"))
    rows = []
    try:
        for n in args.workers:
            res = {mode: [one(work, args, n, s, mode) for s in range(args.seeds)]
                   for mode in (False, True)}
            diff = [np.log10(a["regret"]) - np.log10(g["regret"])
                    for a, g in zip(res[True], res[False], strict=True)]
            se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
            rows.append((n, res, statistics.mean(diff), se))
            print(n, {m: statistics.mean(r["util"] for r in v) for m, v in res.items()},
                  f"log10 regret diff {statistics.mean(diff):+.3f} ± {se:.3f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def mean(values: list[float]) -> str:
        return f"{statistics.mean(values):.3g}"

    md = ["# Asynchronous against generational CMA-ES at equal evaluations", "",
          f"Command: `{command}`", "", *[f"- {x}" for x in machine_info()],
          (f"- synthetic task, {args.dimension} genes, optimum 1.0; " if args.task ==
           "synthetic" else "- digits from scratch (19,210 genes, separable CMA-ES, sigma0 "
           "0.01, CSA); regret = 1 - best accuracy on the search split; ")
          + f"evaluation times log-normal (median 1 s, sigma {args.tail}); {args.budget} "
          "trials per run; "
          f"{args.seeds} seeds per cell; simulated executor (virtual clock: exact order, "
          "no sleeping); default population (4 + 3 ln n)", "",
          "| workers | rule | steady-state utilisation | virtual time for the budget | "
          "final regret 1 - best (geometric mean) | log10 regret, async - generational "
          "(paired by seed, ± s.e.) |", "|---|---|---|---|---|---|"]
    for n, res, d, se in rows:
        for mode, label in ((False, "generational"), (True, "asynchronous")):
            r = res[mode]
            geo = 10 ** statistics.mean(np.log10(x["regret"]) for x in r)
            md.append(f"| {n} | {label} | {statistics.mean(x['util'] for x in r):.1%} | "
                      f"{mean([x['span'] for x in r])} s | {geo:.3g} | "
                      + (f"{d:+.3f} ± {se:.3f}" if mode else "") + " |")
    md.append("")
    write_results(out, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
