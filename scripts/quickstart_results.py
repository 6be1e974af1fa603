"""results/quickstart.md: does search beat hand-set recipes on the skill zoo, honestly?

Every run scores the hand-set baselines first (each expert alone, task arithmetic at 1 and
1/3, TIES and DARE-TIES at density 0.5 and weight 1), chooses its best on the validation
split (the first 750 held-out items per skill) and reports the test split (the other 750),
with the paired comparison against the best baseline on the same test items
(docs/design.md §7.5). The study:

1. controllers at equal evaluations, --seeds seeds each, as anytime curves (test worst skill
   of the validation-chosen best against trials): NSGA-II (the quickstart's), M2N2, CMA-ES
   (on the worst skill) and random search;
2. the fitness signal: CMA-ES on exact match against CMA-ES on the answer probability
   (`search_metrics: task/p_answer`), the same seeds, reported on exact match;
3. the cross-domain target ADD in language B (no expert was trained on it) from the math
   expert and the language-B expert, by PS, DFS and PS+DFS, each against the best baseline.

Runs are kept under --runs, so an interrupted study continues where it stopped.

    python scripts/quickstart_results.py [--budget 50] [--seeds 3] [--zoo skill_zoo]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evomerge.benchmarking import machine_info, write_results
from evomerge.export import export
from evomerge.run.directory import RunDirectory
from evomerge.run.report import report
from evomerge.run.search_run import SearchRun
from evomerge.run.trial_log import best_line, item_scores
from evomerge.stats import compare

ROOT = Path(__file__).resolve().parent.parent
SKILLS = ("add", "rev", "sort")
CONTROLLERS = {
    "NSGA-II (quickstart)": {"kind": "optuna", "sampler": "nsga2"},
    "M2N2": {"kind": "m2n2", "archive_size": 8},
    "CMA-ES (worst skill)": {"kind": "cmaes"},
    "random": {"kind": "random"},
}


def quickstart(zoo: Path, budget: int, seed: int, controller: dict,
               signal: str = "acc") -> dict:
    """The quickstart config on this zoo, inline (one process: reproducible trial order)."""
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg.pop("zoo")
    cfg["export_best"] = False
    cfg.update(budget=budget, seed=seed, controller=controller, executor={"kind": "inline"})
    t = cfg["task"]
    t["base"] = str(zoo / "base")
    t["sources"] = [str(zoo / n) for n in ("math", "rev", "sort")]
    t["evaluators"][0]["include_path"] = [str(zoo / "tasks")]
    if controller["kind"] == "m2n2":  # members compete for items on the smooth signal
        t["sample_scores"] = [f"{s}_search/p_answer" for s in SKILLS]
    if signal == "p_answer":
        for o in t["objectives"]:
            if o.get("metrics"):
                o["search_metrics"] = [m.replace("/acc", "/p_answer") for m in o["metrics"]]
            else:
                o["search_metric"] = o["metric"].replace("/acc", "/p_answer")
    return cfg


def run(cfg: dict, runs: Path, name: str) -> dict[str, Any]:
    """Run (or continue, or just read) one search; its report plus wall time and lines."""
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    start = time.perf_counter()
    # an explicit budget: a kept run with a smaller one is extended (its first trials stay)
    SearchRun.create(path, runs / name, budget=cfg["budget"]).run()
    data = report(runs / name)
    lines = RunDirectory(runs / name).read_log()
    data["lines"] = lines
    data["wall"] = sum(x["seconds"] for x in lines)  # evaluation seconds, summed
    data["session"] = time.perf_counter() - start
    return data


WORST = [("worst", "maximize")]


def at(data: dict[str, Any], n: int) -> dict[str, Any]:
    """The run as it stood after n trials: the validation-chosen best, the best searched
    trial and the best baseline (a kept run may have gone on further)."""
    lines = data["lines"][:n]
    cut = {"lines": lines, "wall": sum(x["seconds"] for x in lines),
           "evaluations": sum("cached" not in x for x in lines)}
    for key, among in (("chosen", "all"), ("best_searched", "searched"),
                       ("best_baseline", "baselines")):
        cut[key] = best_line([x for x in lines if "heldout" in x], WORST, among)
    return cut


def curve(lines: list[dict], name: str, budget: int) -> list[float | None]:
    """Test score of the validation-chosen best after each trial (the anytime curve)."""
    objectives = [(name, "maximize")]
    out: list[float | None] = []
    for n in range(1, budget + 1):
        chosen = best_line([x for x in lines[:n] if "heldout" in x], objectives)
        out.append(chosen["heldout"][name] if chosen else None)
    return out


def paired(a: dict, b: dict, fold_keys: list[str]) -> Any:
    """Paired bootstrap of the worst skill, a's test items against b's."""
    ia, ib = item_scores(a["heldout_items"]), item_scores(b["heldout_items"])
    keys = [k for k in fold_keys if k in ia and k in ib]
    return compare({k: ia[k] for k in keys}, {k: ib[k] for k in keys},
                   lambda m: min(m.values()))


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    se = statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.mean(values):.3f} ± {se:.3f}"


def interval(d: Any) -> str:
    return f"{d.difference:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


def crossdomain(zoo: Path, budget: int, runs: Path) -> list[tuple[str, dict, dict]]:
    """PS, DFS and PS+DFS on ADD in language B: (what, its best line, that run's report)."""
    ev = [{"name": "s", "kind": "lm_eval", "include_path": [str(zoo / "tasks")],
           "tasks": ["add_b_search"], "heldout_tasks": ["add_b_test"],
           "validation_fraction": 0.5, "batch_size": 256}]
    obj = [{"name": "add_b", "metric": "add_b_search/acc"}]

    def cfg(name: str, sources: list[Path], space: dict, base: Path | None = None) -> dict:
        task = {"kind": "merge", "sources": [str(s) for s in sources], "space": space,
                "candidate": {"dtype": "float32"}, "evaluators": ev, "objectives": obj}
        if base is not None:
            task["base"] = str(base)
        return {"name": name, "seed": 0, "budget": budget, "checkpoint_every": 10,
                "task": task, "controller": {"kind": "cmaes"}}

    out = []
    ps = run(cfg("ps", [zoo / "math", zoo / "lang_b"],
                 {"kind": "ps", "method": "task_arithmetic", "groups": 2,
                  "ranges": {"weight": [0, 1]}}, zoo / "base"), runs, "cd_ps")
    out.append(("PS (task arithmetic per layer group, math + lang_b)", ps))
    dfs = run(cfg("dfs", [zoo / "lang_b", zoo / "math"], {"kind": "dfs", "repeats": 2}),
              runs, "cd_dfs")
    out.append(("DFS (routes over lang_b as model A, math)", dfs))
    best_dir = runs / "cd_ps_best"
    if not (best_dir / "config.json").exists():
        export(runs / "cd_ps", best_dir, best=True)
    both = run(cfg("ps_dfs", [best_dir, zoo / "math"], {"kind": "dfs", "repeats": 2}),
               runs, "cd_ps_dfs")
    out.append(("PS+DFS (routes over the PS winner as model A, math)", both))
    return [(what, _line(r, r["best_searched"]), r) for what, r in out]


def _line(data: dict, entry: dict | None) -> dict:
    if entry is None:
        raise SystemExit(f"{data['run_dir']}: no searched trial re-scored; raise --budget")
    return next(x for x in data["lines"] if x["trial"] == entry["trial"])


def resolved(data: dict, entry: dict | None) -> dict:
    """The chosen trial's line, with the items of the trial it repeats (cached)."""
    line = entry if entry is not None and "status" in entry else _line(data, entry)
    if "cached" in line:
        first = next(x for x in data["lines"] if x["trial"] == line["cached"])
        line = {**line, "heldout_items": first["heldout_items"]}
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--zoo", type=Path, default=Path("skill_zoo"))
    ap.add_argument("--runs", type=Path, default=Path("runs/quickstart_results"))
    ap.add_argument("--out", type=Path, default=Path("results/quickstart.md"))
    ap.add_argument("--skip-crossdomain", action="store_true")
    ap.add_argument("--long-budget", type=int, default=None,
                    help="continue the controller runs of the first --long-seeds seeds to this "
                         "many trials (anytime curves beyond --budget)")
    ap.add_argument("--long-seeds", type=int, default=1)
    ap.add_argument("--long-controllers", nargs="+", default=["optuna", "m2n2", "cmaes",
                                                              "random"],
                    help="which controllers (kinds) --long-budget continues")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="start no new run after this long (the tables use whole seeds)")
    args = ap.parse_args()
    command = shlex.join(["python", "scripts/quickstart_results.py", *sys.argv[1:]])
    from evomerge.models import zoos

    zoos.ensure("skills", args.zoo)
    zoo = args.zoo.resolve()
    meta = json.loads((zoo / "zoo.json").read_text())
    keys = [f"skills:{s}_search/acc" for s in SKILLS]

    studies: dict[str, list[dict]] = {}
    variants = [(label, ctl, "acc") for label, ctl in CONTROLLERS.items()]
    variants.append(("CMA-ES on p_answer (worst skill)", {"kind": "cmaes"}, "p_answer"))
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
    cross: list[tuple[str, dict, dict]] = []
    if not args.skip_crossdomain:
        cross = crossdomain(zoo, args.budget, args.runs)
    long_budget = max(args.long_budget or args.budget, args.budget)
    for seed in range(args.seeds):  # seed-major: a study cut short keeps its seeds balanced
        for label, ctl, signal in variants:
            if deadline is not None and time.monotonic() > deadline:
                break
            name = f"{ctl['kind']}{'-' + ctl['sampler'] if 'sampler' in ctl else ''}" \
                   f"{'-p' if signal == 'p_answer' else ''}-s{seed}"
            longer = seed < args.long_seeds and signal == "acc" \
                and ctl["kind"] in args.long_controllers
            budget = long_budget if longer else args.budget
            data = run(quickstart(zoo, budget, seed, ctl, signal), args.runs, name)
            studies.setdefault(label, []).append(data)
            chosen = at(data, args.budget)["chosen"]
            print(label, seed, f"test worst {chosen['heldout']['worst']:.3f}",
                  f"{data['session']:.0f} s", flush=True)
    seeds = min((len(runs) for runs in studies.values()), default=0)
    studies = {label: runs[:seeds] for label, runs in studies.items()}
    cuts = {label: [at(r, args.budget) for r in runs] for label, runs in studies.items()}

    lines = ["# Quickstart: search against hand-set baselines on the skill zoo", "",
             f"Command: `{command}`", "", *(f"- {x}" for x in machine_info()),
             f"- the zoo (`zoo.json`): built in {meta['seconds']} s; inline executor (one "
             "process, reproducible); each run's budget counts its baselines", "",
             "Every figure below is exact match on the **test** split (the held-out items "
             "that chose nothing), for the trial chosen on the **validation** split (the "
             "other half of the held-out items); ± is one standard error. Differences to the "
             "best baseline are paired over the same test items (bootstrap, 95% interval; "
             "for the worst skill resampled within each skill and recomputed).", ""]
    if studies:
        first = studies["NSGA-II (quickstart)"][0]
        lines += ["## The experts and the baselines", "",
                  "| model | " + " | ".join(meta["exact_match_test"]["base"]) + " |",
                  "|---|" + "---|" * len(meta["exact_match_test"]["base"])]
        for name, sc in meta["exact_match_test"].items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in sc.values()) + " |")
        lines += ["", "Baselines, scored first in every run (identical in every run: the same "
                  "recipes on the same items); worst skill:", "",
                  "| baseline | search | validation | test | starts the search |",
                  "|---|---|---|---|---|"]
        for b in first["baselines"]:
            lines.append(f"| {b['name']} | {b['search']['worst']:.3f} | "
                         f"{b['validation']['worst']:.3f} | {b['test']['worst']:.3f} | "
                         f"{'yes' if b['start'] else 'no (not in the space)'} |")
        base_entry = first["best_baseline"]
        lines += ["", f"Best baseline on validation: {base_entry['baseline']} (test worst "
                  f"{base_entry['test']['worst']['value']:.3f} ± "
                  f"{base_entry['test']['worst']['se']:.3f}).", "",
                  f"## Controllers at {args.budget} trials ({seeds} seed"
                  f"{'s' if seeds > 1 else ''})", "",
                  "Trials answered from the recipe cache (Optuna's enqueued baselines) count "
                  "toward the budget but are no evaluation; the evaluations column counts "
                  "the rest (a trial stopped on the first rung costs a fifth of one).", "",
                  "| controller | test worst skill (mean ± s.e. over seeds) | per seed | vs best "
                  "baseline, per seed: difference [95% interval] | evaluations | evaluation "
                  "s per run |", "|---|---|---|---|---|---|"]
        for label, runs in studies.items():
            finals = [c["chosen"]["heldout"]["worst"] for c in cuts[label]]
            diffs = [paired(resolved(r, c["best_searched"]), resolved(r, c["best_baseline"]),
                            keys) for r, c in zip(runs, cuts[label], strict=True)]
            lines.append(f"| {label} | {mean_se(finals)} | "
                         + ", ".join(f"{v:.3f}" for v in finals) + " | "
                         + "; ".join(interval(d) for d in diffs)
                         + f" | {statistics.mean(c['evaluations'] for c in cuts[label]):.0f}"
                         + f" | {statistics.mean(c['wall'] for c in cuts[label]):.0f} |")
        # anytime curves
        lines += ["", "Anytime: test worst skill of the validation-chosen best after n trials "
                  "(mean over seeds; the first 7 trials are the baselines). "
                  "`results/quickstart_curves.png` draws every trial.", ""]
        lines += _curve_table({label: [curve(r["lines"], "worst", args.budget) for r in runs]
                               for label, runs in studies.items()}, args.budget)
        _plot({label: [curve(r["lines"], "worst", args.budget) for r in runs]
               for label, runs in studies.items()}, args.budget,
              args.out.with_name("quickstart_curves.png"), base_entry["test"]["worst"]["value"])
        long_runs = {label: runs[: args.long_seeds] for label, runs in studies.items()
                     if "p_answer" not in label
                     and CONTROLLERS[label]["kind"] in args.long_controllers}
        if long_budget > args.budget and args.long_seeds:
            lines += ["", f"### Longer runs: {long_budget} trials, seed"
                      f"{'s' if args.long_seeds > 1 else ''} 0"
                      f"{f'-{args.long_seeds - 1}' if args.long_seeds > 1 else ''} "
                      f"(the same runs, continued: their first {args.budget} trials are the "
                      "ones above)", ""]
            curves = {label: [curve(r["lines"], "worst", long_budget) for r in runs]
                      for label, runs in long_runs.items()}
            lines += _curve_table(curves, long_budget)
            lines += ["", "| controller | evaluations | evaluation s | vs best baseline at "
                      f"{long_budget} trials, per seed |", "|---|---|---|---|"]
            for label, runs in long_runs.items():
                ends = [at(r, long_budget) for r in runs]
                diffs = [paired(resolved(r, c["best_searched"]),
                                resolved(r, c["best_baseline"]), keys)
                         for r, c in zip(runs, ends, strict=True)]
                lines.append(f"| {label} | {statistics.mean(c['evaluations'] for c in ends):.0f}"
                             f" | {statistics.mean(c['wall'] for c in ends):.0f} | "
                             + "; ".join(interval(d) for d in diffs) + " |")
            _plot(curves, long_budget, args.out.with_name("quickstart_curves_long.png"),
                  base_entry["test"]["worst"]["value"])
        # the fitness signal, paired by seed on the same test items
        acc, pans = studies["CMA-ES (worst skill)"], studies["CMA-ES on p_answer (worst skill)"]
        lines += ["", "## The fitness signal: CMA-ES on exact match against CMA-ES on the answer "
                  "probability (same seeds, same budget, both reported on exact match)", "",
                  "| seed | exact match → test worst | p_answer → test worst | p_answer − exact "
                  "match, paired [95% interval] |", "|---|---|---|---|"]
        for seed, (a, p) in enumerate(zip(acc, pans, strict=True)):
            ca, cp = at(a, args.budget)["chosen"], at(p, args.budget)["chosen"]
            d = paired(resolved(p, cp), resolved(a, ca), keys)
            lines.append(f"| {seed} | {ca['heldout']['worst']:.3f} | "
                         f"{cp['heldout']['worst']:.3f} | {interval(d)} |")
    if cross:
        ps_report = cross[0][2]
        base = resolved(ps_report, ps_report["best_baseline"])
        lines += ["", "## Cross-domain: ADD in language B (no expert trained on it)", "",
                  f"CMA-ES, {args.budget} trials each, exact match on the add_b test split "
                  f"(750 items). Best baseline (of the PS run, on validation): "
                  f"{base['baseline']}, test {base['heldout']['add_b']:.3f}.", "",
                  "Baselines of the PS run (test): " + ", ".join(
                      f"{b['name']} {b['test']['add_b']:.3f}" for b in ps_report["baselines"])
                  + ".", "",
                  "| search | test add_b of its best searched trial | − best baseline, paired "
                  "[95% interval] |", "|---|---|---|"]
        for what, line, r in cross:
            best = resolved(r, r["best_searched"])
            d = compare({"a": item_scores(best["heldout_items"])["s:add_b_search/acc"]},
                        {"a": item_scores(base["heldout_items"])["s:add_b_search/acc"]},
                        lambda m: m["a"])
            lines.append(f"| {what} | {line['heldout']['add_b']:.3f} | {interval(d)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_results(args.out, text)


def _curve_table(curves: dict[str, list[list[float | None]]], budget: int) -> list[str]:
    """Mean anytime value over seeds at a few trial counts, one row per controller."""
    marks = sorted({m for m in (10, 20, 30, 40, 60, 80, 100, 120, 160, 200, 240, 320)
                    if m <= budget} | {budget})
    rows = ["| controller | " + " | ".join(f"n={m}" for m in marks) + " |",
            "|---|" + "---|" * len(marks)]
    for label, cs in curves.items():
        row = []
        for m in marks:
            vals = [c[m - 1] for c in cs if c[m - 1] is not None]
            row.append(f"{statistics.mean(vals):.3f}" if vals else "-")
        rows.append(f"| {label} | " + " | ".join(row) + " |")
    return rows


def _plot(curves: dict[str, list[list[float | None]]], budget: int, path: Path,
          baseline: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = np.arange(1, budget + 1)
    for i, (label, cs) in enumerate(curves.items()):
        arr = np.array([[np.nan if v is None else v for v in c] for c in cs])
        mean = np.nanmean(arr, axis=0)
        ax.plot(xs, mean, drawstyle="steps-post", color=f"C{i}", label=label)
        for c in arr:
            ax.plot(xs, c, drawstyle="steps-post", color=f"C{i}", alpha=0.2, linewidth=0.8)
    ax.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="best baseline")
    ax.set_xlabel("trials (the first 7: baselines)")
    ax.set_ylabel("test worst skill of the validation-chosen best")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
