"""Benchmark: the driver at cluster scale (issue 24, part 3).

Runs the synthetic task (a smooth score, heavy-tailed log-normal evaluation times) on the
simulated executor (docs/design.md §2.2: N workers on a discrete-event clock, nothing sleeps)
for each controller and worker count, in stages: a new run to the first stage's trial count,
then `resume --budget` to each next one, each stage in a fresh process. Per stage it reports
the driver's CPU time per trial (everything the process does: reading the log on resume,
replay, asks, tells, decoding, logging, checkpoints, the plots at the end), the peak resident
memory, and every checkpoint's size and write time. On the largest run it times
`evomerge report` as a user runs it.

Optuna's samplers model every trial, so they are run to smaller trial counts
(`--optuna-stages`) and their growth is fitted and reported.

`export` is timed on a real merge run (the example zoo, 12 trials) whose trial log is then
lengthened to `--export-lines` lines by repeating its own lines with new trial numbers: what
grows with the trial count in `export` is reading and choosing from the log, and the merge
itself does not depend on it.

    python scripts/bench_driver.py [--controllers random m2n2 cmaes] [--workers 64 256]
        [--stages 1000 10000 100000] [--optuna tpe nsga2] [--optuna-stages 500 1000 2000 4000]
        [--dimension 16] [--export-lines 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

CONTROLLERS = {"random": {"kind": "random"}, "m2n2": {"kind": "m2n2"},
               "cmaes": {"kind": "cmaes"},
               "tpe": {"kind": "optuna", "sampler": "tpe", "allow_large_budget": True},
               "nsga2": {"kind": "optuna", "sampler": "nsga2", "allow_large_budget": True}}


# --- one stage, in its own process ---------------------------------------------------------
def child(config: Path, run_dir: Path, budget: int) -> None:
    """Run (or resume) to `budget` trials and print what the stage cost, as JSON."""
    from evomerge.run.directory import RunDirectory
    from evomerge.run.search_run import SearchRun

    checkpoints: list[dict[str, float]] = []
    write = RunDirectory.write_checkpoint

    def timed_write(self: RunDirectory, checkpoint: dict[str, Any], summary: dict) -> None:
        t0 = time.perf_counter()
        write(self, checkpoint, summary)
        checkpoints.append({"trials": checkpoint["trials"],
                            "seconds": time.perf_counter() - t0,
                            "bytes": self.checkpoint_path.stat().st_size})

    RunDirectory.write_checkpoint = timed_write  # type: ignore[method-assign]
    saved = RunDirectory(run_dir).read_state() if run_dir.exists() else None
    before = saved["trials"] if saved else 0  # each stage ends at its budget, checkpointed
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run = SearchRun.open(run_dir, budget=budget) if run_dir.exists() else \
        SearchRun.create(config, run_dir, budget=budget)
    state = run.run()
    print(json.dumps({
        "cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0,
        "trials": state.trials - before, "total": state.trials,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "log_bytes": (run_dir / "trials.jsonl").stat().st_size,
        "journal_bytes": (run_dir / "optuna_journal.log").stat().st_size
        if (run_dir / "optuna_journal.log").exists() else 0,
        "checkpoints": checkpoints}))


def stage(work: Path, name: str, controller: dict, workers: int, budget: int,
          dimension: int) -> dict[str, Any]:
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "name": name, "seed": 0, "budget": budget, "controller": controller,
        "executor": {"kind": "simulated", "workers": workers},
        "task": {"kind": "synthetic", "dimension": dimension, "median_seconds": 60.0,
                 "tail": 1.0}}))
    out = subprocess.run([sys.executable, __file__, "--child", str(config),
                          str(work / name), str(budget)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} to {budget} trials failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(command: list[str], repeats: int = 3) -> float:
    """The fastest of `repeats` runs of a command, in seconds of wall time."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


# --- export on a lengthened merge run ------------------------------------------------------
def export_time(work: Path, lines: int) -> dict[str, Any]:
    """`evomerge export --best` on a real 12-trial merge run, then on its log lengthened to
    `lines` lines."""
    evomerge = [sys.executable, "-m", "evomerge.cli"]
    zoo = work / "zoo"
    subprocess.run([*evomerge, "build-zoo", str(zoo)], check=True, capture_output=True)
    repo = Path(__file__).resolve().parent.parent
    cfg = yaml.safe_load((repo / "configs" / "tiny_merge_ps.yaml").read_text())
    cfg.update(budget=12, controller={"kind": "random"})
    cfg["task"].update(base=str(zoo / "base"), sources=[str(zoo / "math"), str(zoo / "code")])
    cfg["task"]["evaluators"][0]["include_path"] = [str(zoo / "tasks")]
    config = work / "merge.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = work / "merge_run"
    subprocess.run([*evomerge, "search", str(config), "--run-dir", str(run), "--quiet"],
                   check=True, capture_output=True)
    real = (run / "trials.jsonl").read_text().splitlines()
    small = timed([*evomerge, "export", str(run), "--best", "--to", str(work / "out"),
                   "--overwrite"])
    searched = [json.loads(x) for x in real if "baseline" not in json.loads(x)]
    with open(run / "trials.jsonl", "a") as f:
        for n in range(len(real), lines):
            line = dict(searched[n % len(searched)])
            line.update(trial=n, id=n)
            line.pop("validation", None), line.pop("heldout", None)
            f.write(json.dumps(line) + "\n")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["budget"] = lines
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    large = timed([*evomerge, "export", str(run), "--best", "--to", str(work / "out"),
                   "--overwrite"])
    return {"real_trials": len(real), "lines": lines, "small": small, "large": large,
            "log_mb": (run / "trials.jsonl").stat().st_size / 2**20}


# --- the table -----------------------------------------------------------------------------
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--controllers", nargs="+", default=["random", "m2n2", "cmaes"],
                    choices=["random", "m2n2", "cmaes"])
    ap.add_argument("--workers", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--stages", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--optuna", nargs="*", default=["tpe", "nsga2"], choices=["tpe", "nsga2"])
    ap.add_argument("--optuna-stages", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    ap.add_argument("--optuna-workers", type=int, default=64)
    ap.add_argument("--dimension", type=int, default=16)
    ap.add_argument("--export-lines", type=int, default=100000)
    ap.add_argument("--out", type=Path, default=Path("results/bench_driver.md"))
    args = ap.parse_args()
    command = shlex.join(["python", "scripts/bench_driver.py", *sys.argv[1:]])
    from evomerge.benchmarking import machine_info, write_results

    work = Path(tempfile.mkdtemp(prefix="evomerge-bench-driver-"))
    rows: list[tuple[str, int, int, dict[str, Any]]] = []
    reports: dict[str, float] = {}
    try:
        plan = [(c, n, args.stages) for c in args.controllers for n in args.workers] + \
            [(c, args.optuna_workers, args.optuna_stages) for c in args.optuna]
        for name, workers, stages in plan:
            run_name = f"{name}-{workers}"
            for budget in stages:
                r = stage(work, run_name, CONTROLLERS[name], workers, budget, args.dimension)
                rows.append((name, workers, budget, r))
                print(run_name, budget, f"{1000 * r['cpu'] / r['trials']:.2f} ms/trial",
                      f"peak {r['peak_rss_mb']:.0f} MB", flush=True)
            reports[run_name] = timed([sys.executable, "-m", "evomerge.cli", "report",
                                       str(work / run_name)])
            if name not in ("tpe", "nsga2") and workers != args.workers[-1]:
                shutil.rmtree(work / run_name)  # keep the disk use to one large run
        exported = export_time(work, args.export_lines) if args.export_lines else None
    finally:
        shutil.rmtree(work, ignore_errors=True)

    md = ["# The driver at cluster scale", "", f"Command: `{command}`", "",
          *[f"- {x}" for x in machine_info()],
          f"- synthetic task, {args.dimension} genes; simulated executor (virtual clock, "
          "log-normal evaluation times around 60 s, nothing sleeps); the default "
          "`checkpoint_every` (500); each stage is one process: a new run to the first "
          "count, then `resume --budget` to the next", "",
          "CPU per trial: the stage process's CPU time over the trials it added (reading "
          "the log, replay, asks, tells, logging, checkpoints and the plots at the end "
          "included). Checkpoint: the largest size and the mean write time (pickle, write, "
          "fsync, rename, and `state.json` likewise) over the stage's checkpoints.", "",
          "| controller | workers | trials | CPU per trial | peak memory | checkpoints "
          "| checkpoint size | checkpoint write | trial log | Optuna journal |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for name, workers, budget, r in rows:
        ck = r["checkpoints"]
        md.append(
            f"| {name} | {workers} | {budget:,} | {1000 * r['cpu'] / r['trials']:.2f} ms | "
            f"{r['peak_rss_mb']:.0f} MB | {len(ck)} | "
            + (f"{max(c['bytes'] for c in ck) / 1024:.1f} KiB | "
               f"{1000 * statistics.mean(c['seconds'] for c in ck):.1f} ms | " if ck
               else "- | - | ")
            + f"{r['log_bytes'] / 2**20:.1f} MiB | "
            + (f"{r['journal_bytes'] / 2**20:.1f} MiB |" if r["journal_bytes"] else "- |"))
    md += ["", "`evomerge report` on each run at its last count (wall time of the command, "
           "the fastest of 3, Python's start included):", "",
           "| run | trials | report |", "|---|---|---|"]
    last = {f"{n}-{w}": b for n, w, b, _ in rows}
    md += [f"| {k} | {last[k]:,} | {v:.2f} s |" for k, v in reports.items()]
    if exported:
        md += ["", f"`evomerge export --best` on a real merge run of "
               f"{exported['real_trials']} trials (the example zoo, tiny_merge_ps with the "
               f"random controller): {exported['small']:.2f} s; the same run with its log "
               f"lengthened to {exported['lines']:,} lines ({exported['log_mb']:.0f} MiB) by "
               f"repeating its own lines: {exported['large']:.2f} s (fastest of 3, the merge "
               "and Python's start included)."]
    md.append("")
    write_results(args.out, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
