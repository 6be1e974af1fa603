"""Benchmark: how busy Ray workers are kept, per controller.

Real Ray actors on this machine evaluate the synthetic task (`task: {kind: synthetic}`):
each evaluation sleeps for a log-normal time (median --median s, sigma --tail: a heavy tail,
some evaluations 10x the median), so what is measured is the scheduler (the run loop, the
executor, logging and checkpoints), not the evaluator. For N simulated CPU slots (N actors,
`num_cpus=1` each, whatever the machine's cores) and each controller, a search of
--per-worker x N trials runs through the CLI's code path; the trial log's worker, start and
evaluation seconds give utilisation = busy time / (N x wall time), over the steady state
(from the first evaluation's start to the last one's start: after that no candidate is left
to give an idle worker, so the drain says nothing about the scheduler) and over the whole run.

    python scripts/bench_scheduler.py [--workers 2 8] [--median 0.2] [--tail 1.0]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

CONTROLLERS = {
    "m2n2": {"kind": "m2n2", "archive_size": 8},
    "random": {"kind": "random"},
    "optuna (tpe)": {"kind": "optuna", "sampler": "tpe"},
    "cmaes (asynchronous)": {"kind": "cmaes"},  # the default with more than one worker
    "cmaes (generational)": {"kind": "cmaes", "asynchronous": False},
}
STEADY = {"m2n2", "random", "optuna (tpe)", "cmaes (asynchronous)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--median", type=float, default=0.2)
    ap.add_argument("--tail", type=float, default=1.0)
    ap.add_argument("--per-worker", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("results/bench_scheduler.md"))
    args = ap.parse_args()
    command = shlex.join(["python", "scripts/bench_scheduler.py", *sys.argv[1:]])

    import yaml

    from evomerge.benchmarking import machine_info, worker_utilisation
    from evomerge.run.search_run import SearchRun

    info = machine_info()
    for line in info:
        print(line)
    work = Path(tempfile.mkdtemp(prefix="evomerge-bench-sched-"))
    rows = []
    try:
        for n in args.workers:
            for name, controller in CONTROLLERS.items():
                cfg = work / "cfg.yaml"
                budget = args.per_worker * n
                cfg.write_text(yaml.safe_dump({
                    "name": "sched", "seed": 0, "budget": budget, "checkpoint_every": 50,
                    "controller": controller,
                    "executor": {"kind": "ray", "workers": n},
                    "task": {"kind": "synthetic", "dimension": 8,
                             "median_seconds": args.median, "tail": args.tail}}))
                run_dir = work / f"{n}-{len(rows)}"
                t = time.perf_counter()
                SearchRun.create(cfg, run_dir).run()
                wall = time.perf_counter() - t
                lines = [json.loads(x) for x in (run_dir / "trials.jsonl").read_text()
                         .splitlines()]
                steady, whole = worker_utilisation(lines, n)
                rows.append((n, name, budget, steady, whole, wall))
                print(f"N={n} {name}: {budget} trials, utilisation steady {steady:.1%}, "
                      f"whole run {whole:.1%} ({wall:.1f} s with start-up)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines_md = [
        "# Scheduler: worker utilisation on Ray", "", f"Command: `{command}`", "",
        *[f"- {x}" for x in info],
        f"- synthetic task: log-normal evaluation time, median {args.median} s, sigma "
        f"{args.tail}; {args.per_worker} trials per worker; N actors with num_cpus=1 each",
        "- utilisation = busy time / (N x wall time); steady state: from the first "
        "evaluation's start to the last one's start", "",
        "| workers | controller | trials | utilisation, steady state | whole run (with the "
        "drain) | wall time incl. Ray start |",
        "|---|---|---|---|---|---|",
        *[f"| {n} | {name} | {b} | **{s:.1%}** | {w:.1%} | {wall:.1f} s |"
          for n, name, b, s, w, wall in rows], "",
        "Steady-state controllers (M2N2, random, Optuna) give a free worker its next "
        "candidate as soon as it returns one, and so does asynchronous CMA-ES (the default "
        "with more than one worker: another sample of the current distribution while a "
        "generation's slowest members run); generational CMA-ES waits for its whole "
        "generation (the slowest evaluation of each generation idles the others), so its "
        "figure is the price of generations, not of the scheduler. Target: >= 95% in the "
        "steady state for the steady-state controllers and asynchronous CMA-ES at N = 2 "
        "and N = 8: "
        + ("met." if all(s >= 0.95 for n, name, _, s, _, _ in rows if name in STEADY)
           else "NOT met for every row."),
    ]
    args.out.write_text("\n".join(lines_md) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
