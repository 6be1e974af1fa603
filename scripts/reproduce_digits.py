"""Reproduce the M2N2 digits experiments (docs/design.md §8) through `evomerge search`.

Runs each config over several seeds (two processes at a time, one BLAS thread each), reads
test accuracy of the best-train member at 10k/20k/50k evaluations from the trial logs, runs
a bare numpy M2N2 loop (independent code) for the speed comparison and as a check on the
accuracies, and writes `results/digits.md` and `results/digits.png`. The full table takes
about 40 minutes on 2 cores; finished runs are reused from `--runs`.

    python scripts/reproduce_digits.py [--seeds 0,...,9] [--scale 1.0] [--jobs 2]

`--scale` shrinks every budget (e.g. 0.1 for a quick look); the committed table uses 1.0.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# config → (label, budget); paper numbers for the same setting (test accuracy, %)
EXPERIMENTS = {
    "digits_scratch_m2n2": ("M2N2 from scratch (paper: 0/1 scores)", 50_000,
                            {10_000: 81, 50_000: 87}),
    "digits_scratch_m2n2_pcorrect": ("M2N2 from scratch, scores p(true class), c_j = 1",
                                     50_000, {}),
    "digits_scratch_m2n2_pcorrect_best": ("M2N2 from scratch, scores p(true class), "
                                          "c_j = max_k S[k,j]", 50_000, {}),
    "digits_scratch_cmaes": ("sep-CMA-ES from scratch (CSA step size)", 50_000, {50_000: 86}),
    "digits_scratch_ga": ("GA from scratch (alpha 0, no attraction)", 50_000, {50_000: 68}),
    "digits_pretrained_m2n2": ("M2N2 from experts", 10_000, {10_000: 68.5}),
    "digits_pretrained_m2n2_no_split": ("M2N2 from experts, no split point", 10_000,
                                        {10_000: 57.7}),
    "digits_pretrained_m2n2_no_attraction": ("M2N2 from experts, no attraction", 10_000, {}),
}
MARKS = (10_000, 20_000, 50_000)


def run_one(config: str, seed: int, budget: int, out: Path, reuse: bool = True) -> dict:
    run_dir = out / f"{config}-s{seed}"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "evomerge.cli", "search", str(ROOT / "configs" / f"{config}.yaml"),
           "--run-dir", str(run_dir), "--seed", str(seed), "--budget", str(budget)]
    # a finished run of the same config and budget is reused (unless timed), not repeated
    done = run_dir / "wall.json"
    key = {"budget": budget, "config": hashlib.sha256(Path(cmd[4]).read_bytes()).hexdigest()}
    if reuse and done.exists() and {k: v for k, v in json.loads(done.read_text()).items()
                          if k != "wall"} == key:
        wall = json.loads(done.read_text())["wall"]
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        done.write_text(json.dumps({**key, "wall": wall}))
    curve = []  # (trial, train accuracy, test accuracy) at each new best
    with open(run_dir / "trials.jsonl") as f:
        for line in f:
            x = json.loads(line)
            if "heldout" in x:
                curve.append((x["trial"], x["objectives"]["accuracy"], x["heldout"]["accuracy"]))
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "evomerge.cli", "report", str(run_dir), "--json"],
        capture_output=True, text=True, check=True).stdout)
    return {"config": config, "seed": seed, "budget": budget, "wall": wall, "curve": curve,
            "controller_per_trial": report["seconds"]["controller_per_trial"],
            "logging_per_trial": report["seconds"]["logging_per_trial"],
            "dead_classes": dead_classes(run_dir)}


def dead_classes(run_dir: Path) -> int:
    """How many digits the run's best member never predicts on the search split: the way
    from-scratch runs stall (no member earns anything on a class nobody gets right, and no
    small step flips a whole class)."""
    import pickle

    genome = pickle.loads((run_dir / "checkpoint.pkl").read_bytes())["best_genome"]
    return 10 - len(np.unique(_evaluator().predictions(genome)))


@functools.cache
def _evaluator():
    """One digits evaluator for every run's diagnosis (loading the data once)."""
    from evomerge.evaluate.digits import DigitsEvaluator

    return DigitsEvaluator()


def test_at(curve: list[tuple[int, float, float]], n: int) -> float | None:
    best = [c for c in curve if c[0] < n]
    return best[-1][2] if best else None


def bare_loop(n_evals: int, seed: int = 0, marks: tuple[int, ...] = ()
              ) -> tuple[float, dict[int, float]]:
    """The paper-setting M2N2 step in plain numpy with the same vectorised evaluator: archive 20
    grown from 2 random members, alpha 1, attraction, split-point SLERP, mutation 0.01; no
    logging, no checkpoints, no controller objects. Written apart from `evomerge.search.m2n2`,
    so it checks the accuracy as well as the speed. Returns evaluations/s and, at each of
    `marks`, the test accuracy of the best-train member so far."""
    from evomerge.evaluate.digits import N_PARAMS, DigitsEvaluator

    ev = DigitsEvaluator()
    rng = np.random.default_rng(seed)
    pop = [(rng.standard_normal(N_PARAMS) * 0.01).astype(np.float32) for _ in range(2)]
    rows = [ev.evaluate(p) for p in pop]
    s = np.stack([r[1] for r in rows])
    best_train, best_test, at = -1.0, 0.0, {}
    for p, (obj, _) in zip(pop, rows, strict=True):
        if obj["accuracy"] > best_train:
            best_train, best_test = obj["accuracy"], ev.heldout_accuracy(p)
    t0 = time.perf_counter()
    for i in range(len(pop), n_evals):
        if i in marks:
            at[i] = best_test
        z = s.sum(0)
        z[z == 0] = 1
        f = s / z
        fit = f.sum(1)
        a = rng.choice(len(pop), p=fit / fit.sum()) if fit.sum() > 0 else rng.integers(len(pop))
        g = np.maximum(0, f - f[a]).sum(1)
        b = rng.choice(len(pop), p=g / g.sum()) if g.sum() > 0 else rng.choice(
            len(pop), p=fit / fit.sum())
        pa, pb = pop[a], pop[b]
        w, split = rng.uniform(), int(rng.uniform() * N_PARAMS)
        cos = float(pa @ pb) / max(float(np.linalg.norm(pa) * np.linalg.norm(pb)), 1e-12)
        th = np.arccos(np.clip(cos, -1, 1))
        child = np.empty_like(pa)
        for sl, ww in ((slice(0, split), w), (slice(split, None), 1 - w)):
            if abs(cos) > 0.9995:
                child[sl] = (1 - ww) * pa[sl] + ww * pb[sl]
            else:
                child[sl] = (np.sin((1 - ww) * th) * pa[sl] + np.sin(ww * th) * pb[sl]) / np.sin(th)
        child += rng.standard_normal(N_PARAMS, dtype=np.float32) * 0.01
        obj, sc = ev.evaluate(child)
        if obj["accuracy"] > best_train:
            best_train, best_test = obj["accuracy"], ev.heldout_accuracy(child)
        if len(pop) < 20:
            pop.append(child)
            s = np.vstack([s, sc])
            continue
        z = s.sum(0) + sc
        z[z == 0] = 1
        worst = int(np.argmin(np.append((s / z).sum(1), (sc / z).sum())))
        if worst < len(pop):  # the child takes the worst member's slot, scores and all
            pop[worst] = child
            s[worst] = sc
    rate = (n_evals - 2) / (time.perf_counter() - t0)
    at.update({m: best_test for m in marks if m >= n_evals})
    return rate, at


def bare_accuracy(seed: int, budget: int, marks: tuple[int, ...], runs: Path
                  ) -> dict[int, float]:
    """`bare_loop`'s test accuracies in a process of its own with one BLAS thread, so that two
    can run side by side like the `evomerge search` runs; the result is cached like theirs."""
    cache = runs / f"bare-s{seed}-{budget}.json"
    if cache.exists():
        return {int(k): v for k, v in json.loads(cache.read_text()).items()}
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    # this file, loaded by its path with runpy (no import-path change; `main` does not run)
    code = (f"import json, runpy; "
            f"bare_loop = runpy.run_path({str(Path(__file__).resolve())!r})['bare_loop']; "
            f"print(json.dumps(bare_loop({budget}, {seed}, {tuple(marks)!r})[1]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(out)
    return {int(k): v for k, v in json.loads(out).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")  # the reference code runs 10
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--configs", default=",".join(EXPERIMENTS))
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/evomerge-digits-runs"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = args.configs.split(",")
    args.runs.mkdir(parents=True, exist_ok=True)

    from threadpoolctl import threadpool_limits

    # Speed, measured alone: the bare loop against a full `evomerge search` run.
    speed_budget = max(1000, int(50_000 * args.scale))
    with threadpool_limits(1):  # the same one BLAS thread the search processes get
        bare, _ = bare_loop(speed_budget)
    alone = run_one("digits_scratch_m2n2", 99, speed_budget, args.runs, reuse=False)
    print(f"bare numpy M2N2 loop: {bare:.0f} evaluations/s; evomerge search alone: "
          f"{speed_budget / alone['wall']:.0f}/s", flush=True)

    marks = tuple(int(m * args.scale) for m in MARKS)
    jobs = [(c, s, int(EXPERIMENTS[c][1] * args.scale)) for c in configs for s in seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_one(*j, args.runs), jobs))
        bare_runs = list(pool.map(lambda s: bare_accuracy(s, marks[-1], marks, args.runs), seeds))
    for r in results:
        print(r["config"], r["seed"], f"{r['wall']:.0f}s", test_at(r["curve"], r["budget"] + 1))

    def cells(accs: list[dict[int, float]], paper: dict[int, float]) -> str:
        out = []
        for mark, n in zip(MARKS, marks, strict=True):
            vals = [a[n] * 100 for a in accs if a.get(n) is not None]
            if not vals:
                out.append("–")
                continue
            se = statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else 0.0
            ref = f" [{paper[mark]}]" if mark in paper and args.scale == 1.0 else ""
            out.append(f"{statistics.mean(vals):.1f} ± {se:.1f}{ref}")
        return " | ".join(out)

    lines = ["# M2N2 on sklearn digits: reproduction", "",
             f"Command: `python scripts/reproduce_digits.py --seeds {args.seeds} "
             f"--scale {args.scale} --jobs {args.jobs}`", "",
             "Test accuracy (%) of the best-train member, mean ± s.e. over seeds "
             f"{args.seeds}; paper values in brackets. Two runs at a time on 2 cores.", "",
             "| method | 10k | 20k | 50k | wall s / run | evaluations/s | controller ms/eval |"
             " logging ms/eval | runs ending with a dead class |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        label, budget, paper = EXPERIMENTS[c]
        rs = [r for r in results if r["config"] == c]
        accs = [{n: test_at(r["curve"], n + 1) for n in marks if n <= r["budget"]} for r in rs]
        wall = statistics.mean(r["wall"] for r in rs)
        rate = statistics.mean(r["budget"] / r["wall"] for r in rs)
        ctrl = statistics.mean(r["controller_per_trial"] for r in rs) * 1e3
        logt = statistics.mean(r["logging_per_trial"] for r in rs) * 1e3
        dead = sum(r["dead_classes"] > 0 for r in rs)
        lines.append(f"| {label} | {cells(accs, paper)} | {wall:.0f} | {rate:.0f} | {ctrl:.2f} |"
                     f" {logt:.3f} | {dead} of {len(rs)} |")
    lines.append(f"| bare numpy loop, paper setting (independent code, own RNG streams) | "
                 f"{cells(bare_runs, {})} | – | {bare:.0f} (alone) | – | – | – |")
    rate = speed_budget / alone["wall"]
    lines += ["", f"Speed, each measured alone with one BLAS thread: a bare numpy M2N2 loop "
              f"(same step, same evaluator, nothing logged) ran {bare:.0f} evaluations/s; a "
              f"{speed_budget}-evaluation `evomerge search` (process start, trial log, "
              f"checkpoints, held-out scoring of new bests) ran {rate:.0f}/s, i.e. "
              f"{bare / rate:.2f}x the bare loop's time. Controller and logging costs per "
              "evaluation are in the table (two runs sharing the cores).", "",
              "Notes:", "",
              "- *Paper setting* (`digits_scratch_m2n2.yaml`, GA likewise): 0/1 per-sample "
              "scores, archive 20 started from 2 random members whose children fill the "
              "empty slots, as SakanaAI/natural_niches does. Started from 20 random members "
              "instead (configs at commit d807292), seeds 0-4 gave 75.7 ± 4.0 at 10k and "
              "84.7 ± 3.5 at 50k: one seed's archive locked into niches and stalled at 71%.",
              "- *Continuous scores* (`digits_scratch_m2n2_pcorrect.yaml`): each sample "
              "scores the probability the network gives its true class, and with c_j = 1 "
              "(`sample_reward: one`) and alpha 1 it shares out one unit of reward among the "
              "members in proportion to that probability, so a sample nobody gets right "
              "still pays whoever comes closest. docs/design.md §5 (after the paper) sets c_j = "
              "max_k S[k,j] for continuous scores; that row (`..._pcorrect_best.yaml`) is "
              "the one-setting ablation. The best member is still picked by search-split "
              "accuracy. Found on tuning seeds 100-104 by search-split accuracy alone (98.4% "
              "at 10k against 91.8% for the paper setting), then run on seeds 0-9.",
              "- *Where the spread comes from*: from-scratch runs that stall end with a "
              "*dead class*, a digit that no archive member ever predicts (last column: "
              "counted on the best member). Nobody scores on those ~145 samples, so they pay "
              "no one (with continuous scores and c_j = max_k S[k,j], p ≈ 0 there and so "
              "c_j ≈ 0), and no "
              "crossover or σ = 0.01 mutation flips a whole class: seed 5 of the paper "
              "setting sits at 89.2% search / 80.8% test accuracy from 20k to 50k "
              "evaluations with every member blind to the digit 3. Runs that do not stall "
              "reach ~98% search-split accuracy, where test accuracy saturates near 87-90%.",
              "- *Bare loop*: the same algorithm written apart from `evomerge.search.m2n2` "
              "(archive 20 grown from 2 members, the child replacing the worst in place as "
              "the reference code does), with its own random streams. Its accuracy agrees "
              "with `evomerge search` within the standard errors, which checks the "
              "controller; its speed is the yardstick for the run loop's overhead.",
              "- *Settings tried and not adopted* (`digits_scratch_m2n2.yaml` with one change, "
              "seeds 100-104, chosen on search-split accuracy only): archive 30, alpha 2 and "
              "mutation σ 0.02 gave 98.1, 91.3 and 98.2% search accuracy at 50k against the "
              "paper setting's 98.3% (test 86.9, 83.3, 87.1 against 87.2%), and all three "
              "were slower at 10k; the larger archive and σ avoided dead classes but not the "
              "test-accuracy ceiling.",
              "- *sep-CMA-ES*: diagonal covariance, σ0 0.01, population 4 + ⌊3 ln n⌋ = 33, "
              "step size by CSA (`step_size: csa`). pycma's default above 300 dimensions "
              "is TPA, which collapses σ on the accuracy plateaus (63.5 ± 9.2% at 50k over "
              "seeds 0-2 with it, this file at commit 3421a3e). The paper ran full "
              "covariance, ~1.5 h per run; at n = 19,210 its covariance learning rate is "
              "~1e-8 per generation, so it is a step-size-only ES in practice."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(exist_ok=True)
    (args.out / "digits.md").write_text(text)
    plot(results, configs, args.out / "digits.png", args.scale)


def plot(results: list[dict], configs: list[str], path: Path, scale: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for c in configs:
        label, budget, paper = EXPERIMENTS[c]
        rs = [r for r in results if r["config"] == c]
        xs = np.linspace(500 * scale, rs[0]["budget"], 60).astype(int)
        ys = [np.mean([test_at(r["curve"], x + 1) or 0 for r in rs]) * 100 for x in xs]
        (line,) = ax.plot(xs, ys, label=label)
        for mark, val in paper.items():
            if scale == 1.0:
                ax.scatter([mark], [val], marker="x", color=line.get_color())
    ax.set_xlabel("evaluations")
    ax.set_ylabel("test accuracy of best-train member (%)")
    ax.set_title("M2N2 on sklearn digits (lines: evomerge, x: paper)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
