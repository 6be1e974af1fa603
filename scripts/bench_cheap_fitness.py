"""Benchmark: a candidate's full-split score from a few items, learned from the run itself
(issue 24, part 2), measured offline on the logs of real searches.

Reads run directories whose trials logged 0/1 per-item scores on the search split (by
default the quickstart studies `scripts/quickstart_results.py` keeps in
runs/quickstart_results/). For each run, in trial order, each full-fidelity candidate is
predicted from k of its items per part by estimators fitted only on the candidates scored
before it (the run's baselines first): what the search would have known at that moment.
Estimators (evomerge.item_response): `leading` (the mean of the first k items, what the
successive-halving rung scores today), `random` (a uniform sample of k items), `anchors`
(k-means anchor points, cluster-weighted) and `p-IRT` (a two-parameter item response model
on those anchors). Reports the mean absolute error against the candidate's full score, per
part and on the run's first objective (the worst part), and the rank correlation with the
full score among the later half of each run's candidates.

    python scripts/bench_cheap_fitness.py [RUN_DIR ...] [--k 25 50 100 375] [--min-seen 8]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("leading", "random", "anchors", "p-IRT")


def full_rows(run: Path) -> tuple[np.ndarray, list[int]] | None:
    """The run's full-fidelity candidates' per-item scores (rows, in trial order) and the
    items of each part, or None when its scores are not 0/1 or not its objectives' means."""
    from evomerge.run.trial_log import decode_scores, is_full
    from evomerge.search_config import load_config

    cfg = load_config(run / "config.yaml", frozen=True)
    lines = [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]
    lines = [x for x in lines if x["status"] == "ok" and is_full(x) and "scores" in x]
    if not lines or not all("bits" in x["scores"] for x in lines):
        return None
    metrics = [o.metric or "" for o in cfg.task.objectives if o.metric]
    y = np.stack([decode_scores(x["scores"]) for x in lines]).astype(np.float64)
    parts = [y.shape[1] // len(metrics)] * len(metrics)
    names = [o.name for o in cfg.task.objectives if o.metric]
    at = np.cumsum([0, *parts])
    for x, row in zip(lines, y, strict=True):  # each part's mean is its objective
        for name, a, b in zip(names, at[:-1], at[1:], strict=True):
            if abs(row[a:b].mean() - x["objectives"][name]) > 1e-6:
                return None
    return y, parts


def predict(seen: np.ndarray, row: np.ndarray, k: int, seed: int) -> dict[str, float]:
    """Each estimator's estimate of `row`'s mean from k of its items, fitted on `seen`."""
    from evomerge.item_response import ItemResponseModel, anchor_estimate, anchor_points

    rng = np.random.default_rng(seed)
    anchors, weights = anchor_points(seen, k, seed)
    model = ItemResponseModel.fit(seen)
    pick = rng.choice(row.size, size=min(k, row.size), replace=False)
    return {"leading": float(row[:k].mean()), "random": float(row[pick].mean()),
            "anchors": anchor_estimate(weights, row[anchors]),
            "p-IRT": model.estimate(anchors, row[anchors])}


def study(runs: list[Path], ks: list[int], min_seen: int) -> dict[str, Any]:
    errors: dict[tuple[str, int, str], list[float]] = {}
    ranks: dict[tuple[str, int], list[float]] = {}
    used = []
    for run in runs:
        got = full_rows(run)
        if got is None:
            print(f"{run}: skipped (scores not 0/1, or not its objectives' means)")
            continue
        y, parts = got
        used.append((run.name, len(y), parts))
        at = np.cumsum([0, *parts])
        for k in ks:
            est_worst, true_worst = {m: [] for m in METHODS}, []
            for t in range(min_seen, len(y)):
                per_part = {m: [] for m in METHODS}
                truth = []
                for p, (a, b) in enumerate(zip(at[:-1], at[1:], strict=True)):
                    est = predict(y[:t, a:b], y[t, a:b], k, seed=1000 * t + p)
                    true = float(y[t, a:b].mean())
                    truth.append(true)
                    for m in METHODS:
                        per_part[m].append(est[m])
                        errors.setdefault((m, k, "part"), []).append(abs(est[m] - true))
                true_worst.append(min(truth))
                for m in METHODS:
                    est_worst[m].append(min(per_part[m]))
                    errors.setdefault((m, k, "worst"), []).append(
                        abs(min(per_part[m]) - min(truth)))
            half = len(true_worst) // 2
            for m in METHODS:
                if len(true_worst) - half >= 5:
                    ranks.setdefault((m, k), []).append(
                        _spearman(est_worst[m][half:], true_worst[half:]))
        print(run.name, len(y), "candidates", flush=True)
    return {"errors": errors, "ranks": ranks, "runs": used}


def _spearman(a: list[float], b: list[float]) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--k", type=int, nargs="+", default=[25, 50, 100, 375])
    ap.add_argument("--min-seen", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("results/cheap_fitness.md"))
    args = ap.parse_args()
    command = shlex.join(["python", "scripts/bench_cheap_fitness.py", *sys.argv[1:]])
    runs = args.runs or sorted(p for p in Path("runs/quickstart_results").iterdir()
                               if (p / "trials.jsonl").exists())
    res = study(runs, args.k, args.min_seen)
    from evomerge.benchmarking import machine_info, write_results

    def mae(values: list[float]) -> str:
        se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {se:.4f}"

    n_items = res["runs"][-1][2] if res["runs"] else None  # the parts of the last run read
    md = ["# Fitness from a few items, learned from the run", "", f"Command: `{command}`", "",
          *[f"- {x}" for x in machine_info()],
          f"- runs: {', '.join(f'{n} ({c} full candidates)' for n, c, _ in res['runs'])}; "
          f"parts of {n_items} items; each candidate from the {args.min_seen + 1}th on "
          "predicted by estimators fitted on the candidates before it", "",
          "Mean absolute error ± s.e. against the full score, over every predicted "
          "candidate (per part, and on the worst part, the first objective); rank "
          "correlation (Spearman) of the estimated and true worst part over the later half "
          "of each run's candidates, mean ± s.e. over runs.", "",
          "| items per part | item evaluations saved | estimator | MAE per part | "
          "MAE worst part | rank correlation, worst |", "|---|---|---|---|---|---|"]
    for k in args.k:
        saving = f"{(n_items[0] / k if n_items else 0):.0f}x"
        for m in METHODS:
            r = res["ranks"].get((m, k), [])
            rank = f"{statistics.mean(r):.2f} ± {statistics.stdev(r) / len(r) ** 0.5:.2f}" \
                if len(r) > 1 else "-"
            md.append(f"| {k} | {saving} | {m} | {mae(res['errors'][(m, k, 'part')])} | "
                      f"{mae(res['errors'][(m, k, 'worst')])} | {rank} |")
    md.append("")
    write_results(args.out, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
