"""results/quickstart.md: does search beat hand-set recipes on the skill zoo?

On the held-out split (1,500 items per skill, exact match), for the three skill experts
(math: add, rev, sort) merged onto their base:

1. hand-set recipes: each expert alone, the base, uniform task arithmetic (weights 1/3 and
   1), TIES and DARE-TIES at mergekit's README settings (density 0.5, weight 0.5 each,
   normalised), against the searched recipes (per-layer-group task-arithmetic weights);
2. controllers at the same evaluation budget, --seeds seeds each (mean ± s.e. of the
   held-out worst skill of the trial that is best on the search split): NSGA-II (the
   quickstart's), M2N2 (per-document answer probabilities as the samples members compete
   for), CMA-ES (on the worst skill) and random search;
3. the cross-domain pair: ADD in language B (no expert was trained on it) from the math
   expert (ADD in language A) and the language-B expert, by PS, DFS and PS+DFS.

    python scripts/quickstart_results.py [--budget 60] [--seeds 3] [--zoo skill_zoo]
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

import yaml

from evomerge.benchmarking import score_recipes

SKILLS = ("add", "rev", "sort")


def quickstart(zoo: Path, budget: int, seed: int, controller: dict,
               sample_scores: bool = False) -> dict:
    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" /
                          "quickstart.yaml").read_text())
    cfg.pop("zoo")
    cfg["export_best"] = False
    cfg.update(budget=budget, seed=seed, controller=controller,
               executor={"kind": "inline"})
    t = cfg["task"]
    t["base"] = str(zoo / "base")
    t["sources"] = [str(zoo / n) for n in ("math", "rev", "sort")]
    t["evaluators"][0]["include_path"] = [str(zoo / "tasks")]
    if sample_scores:
        t["sample_scores"] = [f"{s}_search/p_answer" for s in SKILLS]
    return cfg


def run(cfg: dict, folder: Path, name: str) -> dict:
    from evomerge.run.report import report
    from evomerge.run.search_run import SearchRun

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    start = time.perf_counter()
    SearchRun.create(path, folder / name).run()
    data = report(folder / name)
    data["wall"] = time.perf_counter() - start
    return data


def held_out_of_best(data: dict) -> dict:
    if data["best"] is None:
        raise SystemExit(f"{data['run_dir']}: no full-fidelity trial; raise --budget")
    return data["best"]["heldout"]


def hand_set(zoo: Path) -> list[tuple[str, dict]]:
    base = str(zoo / "base")
    src = [str(zoo / n) for n in ("math", "rev", "sort")]

    def models(**params):
        return [{"model": s, "parameters": dict(params)} for s in src]

    recipes = [
        ("base alone", {"method": "linear", "sources": [{"model": base}]}),
        *((f"{n} expert alone", {"method": "linear", "sources": [{"model": s}]})
          for n, s in zip(("math", "rev", "sort"), src, strict=True)),
        ("task arithmetic, weights 1/3", {"method": "task_arithmetic", "base": base,
                                          "sources": models(weight=1 / 3)}),
        ("task arithmetic, weights 1", {"method": "task_arithmetic", "base": base,
                                        "sources": models(weight=1.0)}),
        ("TIES, density 0.5, weight 0.5, normalised",
         {"method": "ties", "base": base, "sources": models(weight=0.5, density=0.5),
          "parameters": {"normalize": True}}),
        ("DARE-TIES, density 0.5, weight 0.5, normalised",
         {"method": "dare_ties", "base": base, "sources": models(weight=0.5, density=0.5),
          "parameters": {"normalize": True}}),
    ]
    return recipes


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    se = statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.mean(values):.3f} ± {se:.3f}"


def crossdomain(zoo: Path, budget: int, folder: Path) -> list[tuple[str, float, float]]:
    """PS, DFS and PS+DFS on ADD in language B: (what, search acc, held-out acc)."""
    from evomerge.export import export

    ev = [{"name": "s", "kind": "lm_eval", "include_path": [str(zoo / "tasks")],
           "tasks": ["add_b_search"], "heldout_tasks": ["add_b_test"], "batch_size": 256}]
    obj = [{"name": "add_b", "metric": "add_b_search/acc"}]

    def cfg(name: str, sources: list[Path], space: dict, base: Path | None = None) -> dict:
        task = {"kind": "merge", "sources": [str(s) for s in sources], "space": space,
                "candidate": {"dtype": "float32"}, "evaluators": ev, "objectives": obj}
        if base is not None:
            task["base"] = str(base)
        return {"name": name, "seed": 0, "budget": budget, "checkpoint_every": 10,
                "task": task, "controller": {"kind": "cmaes"}}

    rows = []
    ps = run(cfg("ps", [zoo / "math", zoo / "lang_b"],
                 {"kind": "ps", "method": "task_arithmetic", "groups": 2,
                  "ranges": {"weight": [0, 1]}}, zoo / "base"), folder, "cd_ps")
    rows.append(("PS (task arithmetic per layer group, math + lang_b)",
                 ps["best"]["objectives"]["add_b"], ps["best"]["heldout"]["add_b"]))
    dfs = run(cfg("dfs", [zoo / "lang_b", zoo / "math"], {"kind": "dfs", "repeats": 2}),
              folder, "cd_dfs")
    rows.append(("DFS (routes over lang_b as model A, math)",
                 dfs["best"]["objectives"]["add_b"], dfs["best"]["heldout"]["add_b"]))
    export(folder / "cd_ps", folder / "ps_best", best=True)
    both = run(cfg("ps_dfs", [folder / "ps_best", zoo / "math"],
                   {"kind": "dfs", "repeats": 2}), folder, "cd_ps_dfs")
    rows.append(("PS+DFS (routes over the PS winner as model A, math)",
                 both["best"]["objectives"]["add_b"], both["best"]["heldout"]["add_b"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--zoo", type=Path, default=Path("skill_zoo"))
    ap.add_argument("--out", type=Path, default=Path("results/quickstart.md"))
    args = ap.parse_args()
    command = shlex.join(["python", "scripts/quickstart_results.py", *sys.argv[1:]])
    from evomerge.models import zoos

    zoos.ensure("skills", args.zoo)
    zoo = args.zoo.resolve()
    meta = json.loads((zoo / "zoo.json").read_text())
    tasks = [f"{s}_test" for s in SKILLS]
    fixed = score_recipes(zoo, hand_set(zoo), tasks)
    controllers = {
        "NSGA-II (quickstart)": ({"kind": "optuna", "sampler": "nsga2"}, False),
        "M2N2": ({"kind": "m2n2", "archive_size": 8}, True),
        "CMA-ES (worst skill)": ({"kind": "cmaes"}, False),
        "random": ({"kind": "random"}, False),
    }
    searched: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, (ctl, samples) in controllers.items():
            for seed in range(args.seeds):
                data = run(quickstart(zoo, args.budget, seed, ctl, samples), folder,
                           f"{label.split()[0].lower()}-{seed}")
                searched.setdefault(label, []).append(data)
                print(label, seed, held_out_of_best(data), f"{data['wall']:.0f} s",
                      flush=True)
        cross = crossdomain(zoo, args.budget, folder)
        cross_fixed = score_recipes(zoo, [
            ("base alone", {"method": "linear", "sources": [{"model": str(zoo / "base")}]}),
            ("math expert alone", {"method": "linear",
                                   "sources": [{"model": str(zoo / "math")}]}),
            ("lang_b expert alone", {"method": "linear",
                                     "sources": [{"model": str(zoo / "lang_b")}]}),
            ("task arithmetic, math + lang_b, weights 1/2",
             {"method": "task_arithmetic", "base": str(zoo / "base"),
              "sources": [{"model": str(zoo / n), "parameters": {"weight": 0.5}}
                          for n in ("math", "lang_b")]}),
        ], ["add_b_test"])

    lines = ["# Quickstart: search against hand-set recipes on the skill zoo", "",
             f"Command: `{command}` (2 CPU cores). The zoo (`zoo.json`): built in "
             f"{meta['seconds']} s; exact match of each model on 1,500 held-out items per "
             "skill:", "",
             "| model | " + " | ".join(meta["exact_match_test"]["base"]) + " |",
             "|---|" + "---|" * len(meta["exact_match_test"]["base"])]
    for name, sc in meta["exact_match_test"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in sc.values()) + " |")
    lines += ["", "## Held-out exact match (1,500 items per skill)", "",
              "| recipe | add | rev | sort | worst |", "|---|---|---|---|---|"]
    for name, sc in fixed:
        lines.append(f"| {name} | " + " | ".join(f"{sc[s]:.3f}" for s in SKILLS)
                     + f" | {min(sc.values()):.3f} |")
    for label, runs in searched.items():
        h = runs[0]["best"]["heldout"]
        lines.append(f"| searched: {label}, seed 0 (best worst skill on the search split) | "
                     + " | ".join(f"{h[s]:.3f}" for s in SKILLS) + f" | {h['worst']:.3f} |")
    lines += ["", f"## Controllers at {args.budget} evaluations ({args.seeds} seeds)", "",
              "Held-out worst skill of the trial best on the search split (mean ± s.e.); "
              "evaluations include those stopped at the first multi-fidelity rung.", "",
              "| controller | held-out worst skill | search worst skill | wall per run |",
              "|---|---|---|---|"]
    for label, runs in searched.items():
        lines.append(
            f"| {label} | {mean_se([r['best']['heldout']['worst'] for r in runs])} "
            f"| {mean_se([r['best']['objectives']['worst'] for r in runs])} "
            f"| {statistics.mean(r['wall'] for r in runs):.0f} s |")
    lines += ["", "## Cross-domain: ADD in language B (no expert trained on it)", "",
              "| recipe | search | held-out |", "|---|---|---|"]
    for name, sc in cross_fixed:
        lines.append(f"| {name} | - | {sc['add_b']:.3f} |")
    for name, s, h in cross:
        lines.append(f"| {name}, CMA-ES, {args.budget} evaluations | {s:.3f} | {h:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
