"""Benchmark: the anchor-point fidelity in the loop against full-fidelity search, at equal
wall time (issue 24, part 2), on the quickstart's skill zoo.

Two setups: the quickstart itself (task arithmetic over 2 layer groups, 6 genes, its own
promote 0.34) and a larger space (TIES weights and densities over 4 layer groups, 24 genes,
promote 0.2). Per setup and seed, two searches run side by side, one process each with one
torch thread (so they share the machine evenly): in full (no `fidelity` block) and with
`fidelity: {anchors: ...}`, each with the same `max_seconds` after its baselines and a
budget it cannot reach in that time. Both choose their best on the validation split; the
figure is the test worst skill of that choice, and the paired bootstrap of the two choices on
the same test items. It also reports, from the anchor runs' own logs, how far each promoted
candidate's anchor estimate was from its full score (candidates the anchors had not seen:
they were fitted before it was scored, but chosen for a high estimate, so the error is
biased upward against the unselected candidates of results/cheap_fitness.md) and the item
evaluations per candidate. Runs are kept under --runs; a rerun reads them.

    python scripts/bench_anchor_fidelity.py [--seconds 600] [--seeds 0 1 2] [--items 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evomerge.benchmarking import machine_info, write_results
from evomerge.run.directory import RunDirectory
from evomerge.run.trial_log import is_full, item_scores
from evomerge.stats import compare

ROOT = Path(__file__).resolve().parents[1]
SKILLS = ("add", "rev", "sort")
ITEMS_PER_SKILL = 1500


# name -> (space, promote)
SETUPS = {
    "quickstart": ({"kind": "ps", "method": "task_arithmetic", "groups": 2,
                    "ranges": {"weight": [0, 1]}}, 0.34),
    "ties-4-groups": ({"kind": "ps", "method": "ties", "groups": 4,
                       "ranges": {"weight": [0, 1], "density": [0.1, 1]}}, 0.2),
}


def config(zoo: Path, seed: int, seconds: float, anchors: dict | None, setup: str) -> dict:
    """The quickstart on this zoo, inline, to a time limit, in the setup's space."""
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg.pop("zoo")
    cfg.pop("fidelity")
    cfg.update(budget=5000, seed=seed, max_seconds=seconds, export_best=False,
               executor={"kind": "inline"})
    t = cfg["task"]
    t["base"] = str(zoo / "base")
    t["sources"] = [str(zoo / n) for n in ("math", "rev", "sort")]
    t["evaluators"][0]["include_path"] = [str(zoo / "tasks")]
    t["space"], promote = SETUPS[setup]
    if anchors is not None:
        cfg["fidelity"] = {"anchors": anchors, "promote": promote, "window": 40}
    return cfg


def launch(cfg: dict, runs: Path, name: str) -> subprocess.Popen | None:
    """Start one search in its own process (none if it already ran)."""
    if (runs / name / "trials.jsonl").exists():
        return None
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "evomerge.cli", "search", str(path),
                             "--run-dir", str(runs / name)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(runs / f"{name}.err", "w"))


def chosen(lines: list[dict]) -> dict:
    """The trial chosen on the validation split, with the items of the trial it repeats."""
    rescored = [x for x in lines if "validation" in x and "heldout_items" in x or
                "validation" in x and "cached" in x]
    best = max(rescored, key=lambda x: x["validation"]["worst"])
    if "cached" in best:
        first = next(x for x in lines if x["trial"] == best["cached"])
        best = {**best, "heldout_items": first["heldout_items"]}
    return best


def summary(run: Path) -> dict[str, Any]:
    lines = RunDirectory(run).read_log()
    searched = [x for x in lines if "baseline" not in x and "cached" not in x]
    full = [x for x in searched if is_full(x)]
    items = [int(x.get("anchor_items", 0)) + (3 * ITEMS_PER_SKILL if is_full(x) else 0)
             for x in searched]
    errors = []  # promoted candidates: their anchor estimate against their full score
    for x in full:
        for estimate in (x.get("rungs") or {}).values():
            errors.append({k: estimate[k] - x["objectives"][k] for k in estimate})
    return {"lines": lines, "trials": len(searched), "full": len(full), "chosen": chosen(lines),
            "items_per_candidate": statistics.mean(items) if items else float("nan"),
            "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--zoo", type=Path, default=Path("skill_zoo"))
    ap.add_argument("--runs", type=Path, default=Path("runs/anchor_fidelity"))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "anchor_fidelity.md")
    args = ap.parse_args()
    if not (args.zoo / "base").exists():
        subprocess.run([sys.executable, "-m", "evomerge.cli", "build-zoo", str(args.zoo),
                        "--kind", "skills"], check=True)
    anchors = {"items": args.items, "min_full": 8, "refit_every": 10}
    arms = {"full": None, "anchors": anchors}
    out = ["# The anchor-point fidelity in the loop, at equal wall time", "",
           f"Command: `python scripts/bench_anchor_fidelity.py {shlex.join(sys.argv[1:])}`",
           "", *machine_info(), "",
           f"Each search: NSGA-II on the quickstart's skill zoo (3 experts), inline, one "
           f"torch thread, {args.seconds:.0f} s after its 7 baselines, the two arms of a seed "
           f"side by side. Anchors: {args.items} items per skill (of {ITEMS_PER_SKILL}), first "
           "fitted after 8 full evaluations, refitted every 10; the best `promote` share of "
           "the last 40 estimates goes on to the full split. Test worst skill of the "
           "validation-chosen best (750 test items per skill); paired: anchors − full on the "
           "same test items, bootstrap 95% interval. Item evaluations count the search split "
           "only (re-scoring on validation and test is the same in both arms).", ""]
    for setup, (space, promote) in SETUPS.items():
        for seed in args.seeds:
            procs = [launch(config(args.zoo, seed, args.seconds, a, setup), args.runs,
                            f"{setup}-{arm}-s{seed}") for arm, a in arms.items()]
            for p in procs:
                if p is not None and p.wait() != 0:
                    raise SystemExit(f"a search failed; see {args.runs}/*.err")
        out += section(setup, space, promote, args, list(arms))
    write_results(args.out, "\n".join(out))


def section(setup: str, space: dict, promote: float, args: Any, arms: list[str]) -> list[str]:
    """One setup's table over seeds."""
    got = {(arm, s): summary(args.runs / f"{setup}-{arm}-s{s}") for arm in arms
           for s in args.seeds}

    def mean_se(values: list[float], digits: int = 3) -> str:
        if len(values) < 2:
            return f"{values[0]:.{digits}f}"
        return (f"{statistics.mean(values):.{digits}f} ± "
                f"{statistics.stdev(values) / len(values) ** 0.5:.{digits}f}")

    keys = [f"skills:{s}_search/acc" for s in SKILLS]  # test items, search names
    out = [f"## {setup}: `space: {json.dumps(space)}`, promote {promote}", "",
           "| seed | full: candidates | full: test worst (trial) | anchors: candidates "
           "(in full) | anchors: item evaluations per candidate | anchors: test worst "
           "(trial) | anchors − full, paired |", "|---|---|---|---|---|---|---|"]
    diffs = []
    for s in args.seeds:
        f, a = got[("full", s)], got[("anchors", s)]
        ia = item_scores(a["chosen"]["heldout_items"])
        ib = item_scores(f["chosen"]["heldout_items"])
        d = compare({k: ia[k] for k in keys}, {k: ib[k] for k in keys},
                    lambda m: min(m.values()))
        diffs.append(d.difference)
        out.append(f"| {s} | {f['trials']} | {f['chosen']['heldout']['worst']:.4f} "
                   f"({f['chosen']['trial']}) | {a['trials']} ({a['full']}) | "
                   f"{a['items_per_candidate']:.0f} | {a['chosen']['heldout']['worst']:.4f} "
                   f"({a['chosen']['trial']}) | {d.difference:+.4f} [{d.low:+.4f}, "
                   f"{d.high:+.4f}] |")
    fw = [got[("full", s)]["chosen"]["heldout"]["worst"] for s in args.seeds]
    aw = [got[("anchors", s)]["chosen"]["heldout"]["worst"] for s in args.seeds]
    per = [got[("anchors", s)]["items_per_candidate"] for s in args.seeds]
    out += ["", f"Over seeds: full {mean_se(fw, 4)}, anchors {mean_se(aw, 4)}, paired "
            f"difference {mean_se(diffs, 4)} (mean ± s.e. over {len(args.seeds)} seeds). "
            f"Item evaluations per candidate: {3 * ITEMS_PER_SKILL} in full, "
            f"{statistics.mean(per):.0f} with anchors "
            f"({3 * ITEMS_PER_SKILL / statistics.mean(per):.1f}x fewer).", ""]
    errors = [e for s in args.seeds for e in got[("anchors", s)]["errors"]]
    if errors:
        out += ["Anchor estimates of the promoted candidates against their full scores "
                f"({len(errors)} candidates over the seeds; mean absolute error ± s.e., and "
                "the mean signed error: positive is an estimate above the full score):", "",
                "| objective | MAE | mean error |", "|---|---|---|"]
        for k in errors[0]:
            v = [abs(e[k]) for e in errors]
            signed = [e[k] for e in errors]
            se = float(np.std(v, ddof=1) / len(v) ** 0.5) if len(v) > 1 else float("nan")
            out.append(f"| {k} | {statistics.mean(v):.4f} ± {se:.4f} | "
                       f"{statistics.mean(signed):+.4f} |")
        out.append("")
    return out


if __name__ == "__main__":
    main()
