"""results/smollm2.md: merging and searching over a real pretrained model, SmolLM2-135M.

SmolLM2-135M-Instruct (from the `smollm2` extra) and two experts fine-tuned from it here
(math: two-digit addition; french: 0-999 from English into French words). Reports, on
held-out items never used in training or search (lm-eval exact match):

1. the base and the experts, with their training time;
2. `evomerge merge` against `mergekit-yaml` on the same YAML over the real checkpoints
   (float32: the same weights; bfloat16: within rounding, in bf16 ulps);
3. hand-set merges (task arithmetic, TIES, DARE-TIES, linear, SLERP);
4. `evomerge search configs/smollm2_ps.yaml` (CMA-ES on two local Ray workers), random
   search at the same budget, and PS+DFS (configs/smollm2_ps_dfs.yaml) from the PS winner:
   wall time, evaluations per hour, search and held-out scores of the best by the worst skill.
   The cross-domain skill (the sum, in French: no expert was trained on it) is scored for
   every model too.

    python scripts/smollm2_results.py [--zoo smollm2_zoo] [--runs runs/smollm2]
        [--budget 96] [--dfs-budget 48]

Runs already finished under --runs are reused, and so are the held-out scores and the mergekit
comparison (runs/smollm2/measured.json; delete it or the runs to measure again). The merge
speed section quotes results/bench_merge.md (synthetic) and results/bench_merge_smollm2.md
(this model: `python scripts/bench_merge.py --real smollm2_zoo`). Needs the smollm2 extra
and, for the comparison, mergekit (pip install -e ".[smollm2,mergekit]").
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from evomerge.benchmarking import machine_info, score_recipes

ROOT = Path(__file__).resolve().parent.parent
SKILLS = ("add", "french", "add_french")
TESTS = [f"{s}_test" for s in SKILLS]


def evomerge_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def search(cfg: dict, run_dir: Path, label: str) -> dict:
    """`evomerge search` on `cfg` (written beside the run), unless a finished run is there."""
    from evomerge.run.report import report

    data = _report(run_dir)
    if data is None or data["trials"] < cfg["budget"]:
        path = run_dir.parent / f"{run_dir.name}.yaml"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [evomerge_bin("evomerge"), "search", str(path), "--run-dir", str(run_dir), "-q"]
        print(f"{label}: {shlex.join(cmd)}", flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"{label}: {time.perf_counter() - start:.0f} s", flush=True)
        data = report(run_dir)
    if data["best"] is None:
        raise SystemExit(f"{run_dir}: no full-fidelity trial; raise the budget")
    if not (run_dir / "best" / "config.json").exists():  # a run made without export_best
        from evomerge.export import export_into_run
        from evomerge.run.directory import RunDirectory

        files = RunDirectory.existing(run_dir)
        export_into_run(files, files.read_config(), run_dir / "best")
    return data


def _report(run_dir: Path) -> dict | None:
    from evomerge.run.report import report

    try:
        return report(run_dir)
    except Exception:  # no run there yet, or an unreadable one: search (again)
        return None


def configs(zoo: Path, runs: Path, budget: int, dfs_budget: int) -> dict[str, dict]:
    """The shipped configs, pointed at `zoo` and `runs`; random search = the PS config with
    the random controller."""

    def load(name: str) -> dict:
        cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
        cfg.pop("zoo", None)
        task = cfg["task"]
        if "base" in task:
            task["base"] = str(zoo / Path(task["base"]).name)
        task["evaluators"][0]["include_path"] = [str(zoo / "tasks")]
        return cfg

    ps = load("smollm2_ps.yaml")
    ps["budget"] = budget
    ps["task"]["sources"] = [str(zoo / "math"), str(zoo / "french")]
    rnd = copy.deepcopy(ps) | {"name": "smollm2_random", "controller": {"kind": "random"}}
    dfs = load("smollm2_ps_dfs.yaml")
    dfs["budget"] = dfs_budget
    dfs["task"]["sources"] = [str(runs / "ps" / "best"), str(zoo / "math")]
    return {"ps": ps, "random": rnd, "ps_dfs": dfs}


def hand_set(zoo: Path) -> list[tuple[str, dict | Path]]:
    base, math, french = (str(zoo / n) for n in ("base", "math", "french"))

    def pair(**params) -> list[dict]:
        return [{"model": s, "parameters": dict(params)} for s in (math, french)]

    return [
        ("base", zoo / "base"),
        ("math expert", zoo / "math"),
        ("french expert", zoo / "french"),
        ("linear, weights 0.5", {"method": "linear", "sources": pair(weight=0.5)}),
        ("SLERP, t = 0.5", {"method": "slerp", "base": math, "sources": [{"model": french}],
                            "parameters": {"t": 0.5}}),
        ("task arithmetic, weights 1", {"method": "task_arithmetic", "base": base,
                                        "sources": pair(weight=1.0)}),
        ("task arithmetic, weights 0.5", {"method": "task_arithmetic", "base": base,
                                          "sources": pair(weight=0.5)}),
        ("TIES, density 0.5, weights 1, normalised", {"method": "ties", "base": base,
                                          "sources": pair(weight=1.0, density=0.5)}),
        ("DARE-TIES, density 0.5, weights 1", {"method": "dare_ties", "base": base,
                                               "sources": pair(weight=1.0, density=0.5)}),
    ]


def compare_with_mergekit(zoo: Path, work: Path) -> list[dict]:
    """Both tools on the same mergekit YAML; per output dtype and method, how far apart."""
    mergekit = Path(evomerge_bin("mergekit-yaml"))
    if not mergekit.exists():
        print("mergekit-yaml not installed: no comparison", flush=True)
        return []
    rows = []
    sources = [{"model": str(zoo / n), "parameters": {"weight": w, "density": 0.5}}
               for n, w in (("math", 0.7), ("french", 0.6))]
    for method in ("linear", "task_arithmetic", "ties"):
        for dtype in ("float32", "bfloat16"):
            cfg = {"merge_method": method, "dtype": dtype,
                   "models": [{"model": s["model"],
                               "parameters": {k: v for k, v in s["parameters"].items()
                                              if method == "ties" or k == "weight"}}
                              for s in sources]}
            if method != "linear":
                cfg["base_model"] = str(zoo / "base")
            recipe = work / f"{method}-{dtype}.yaml"
            recipe.write_text(yaml.safe_dump(cfg, sort_keys=False))
            flags = [[]] if dtype == "float32" else [[], ["--match-mergekit-precision"]]
            mk_out = work / f"{method}-{dtype}-mergekit"
            t = time.perf_counter()
            subprocess.run([str(mergekit), str(recipe), str(mk_out)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            mk_wall = time.perf_counter() - t
            for flag in flags:
                ev_out = work / f"{method}-{dtype}-evomerge"
                t = time.perf_counter()
                subprocess.run([evomerge_bin("evomerge"), "merge", str(recipe), str(ev_out),
                                "--overwrite", "--no-progress", *flag], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wall = time.perf_counter() - t
                ours, theirs = tensors(ev_out), tensors(mk_out)
                rows.append({"method": method, "dtype": dtype, "flags": " ".join(flag),
                             **weight_distance(ours, theirs),
                             "evomerge_s": wall, "mergekit_s": mk_wall})
                if method == "ties" and dtype == "float32":
                    rows[-1]["at_ties"] = threshold_ties(zoo, ours, theirs, 0.5)
                print(f"mergekit comparison: {rows[-1]}", flush=True)
                shutil.rmtree(ev_out, ignore_errors=True)
            shutil.rmtree(mk_out, ignore_errors=True)
    return rows


def tensors(d: Path) -> dict:
    """Every tensor a merge wrote, by name."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def threshold_ties(zoo: Path, ours: dict, theirs: dict, density: float) -> tuple[int, int]:
    """(entries that differ, of them how many sit where some expert's |task vector| equals
    its top-k threshold): TIES keeps k = int(d·n) entries, and where several tie at the k-th
    magnitude mergekit's argsort keeps an arbitrary few, evomerge the lowest indices."""
    import torch

    from evomerge.models.source import SourceModel

    sources = {n: SourceModel.open(str(zoo / n)) for n in ("base", "math", "french")}
    differ = tied = 0
    try:
        for key, x in ours.items():
            ne = (x != theirs[key]).flatten()
            if not ne.any():
                continue
            differ += int(ne.sum())
            base = sources["base"].read(key).float().flatten()
            at = torch.zeros_like(ne)
            for name in ("math", "french"):
                mag = (sources[name].read(key).float().flatten() - base).abs()
                k = max(1, int(density * mag.numel()))
                at |= mag == mag.kthvalue(mag.numel() - k + 1).values
            tied += int((ne & at).sum())
    finally:
        for src in sources.values():
            src.close()
    return differ, tied


def weight_distance(ta: dict, tb: dict) -> dict:
    """Max |difference|, share of elements that differ and the most units in the last place
    between the tools' tensors (the keys both wrote; extra keys listed)."""
    import torch

    common = sorted(set(ta) & set(tb))
    max_abs, differing, total, max_ulps, one_ulp = 0.0, 0, 0, 0.0, 0
    worst = ""
    for k in common:
        x, y = ta[k], tb[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            raise SystemExit(f"{k}: evomerge {x.dtype} {tuple(x.shape)} vs mergekit "
                             f"{y.dtype} {tuple(y.shape)}")
        n_diff = int((x != y).sum())
        differing += n_diff
        total += x.numel()
        if not n_diff:
            continue
        gap = (x.float() - y.float()).abs()
        if float(gap.max()) > max_abs:
            max_abs, worst = float(gap.max()), k
        # in units in the last place of the larger of the two values, at the stored precision
        _, exp = torch.frexp(torch.maximum(x.float().abs(), y.float().abs()))
        bits = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24}[x.dtype]
        ulps = gap / torch.ldexp(torch.ones_like(gap), exp - bits)
        max_ulps = max(max_ulps, float(ulps.max()))
        one_ulp += int(((ulps > 0) & (ulps <= 1)).sum())
    return {"tensors": len(common), "only_evomerge": sorted(set(ta) - set(tb)),
            "only_mergekit": sorted(set(tb) - set(ta)), "max_abs": max_abs,
            "worst_tensor": worst, "differing": differing / total if total else 0.0,
            "max_ulps": max_ulps, "within_one_ulp": one_ulp / differing if differing else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=Path("smollm2_zoo"))
    ap.add_argument("--runs", type=Path, default=Path("runs/smollm2"))
    ap.add_argument("--budget", type=int, default=96, help="PS and random search evaluations")
    ap.add_argument("--dfs-budget", type=int, default=48)
    ap.add_argument("--out", type=Path, default=Path("results/smollm2.md"))
    args = ap.parse_args()
    command = shlex.join(["python", "scripts/smollm2_results.py", *sys.argv[1:]])
    from evomerge.models import zoos
    from evomerge.models.smollm2 import SmolLM2Error

    try:
        zoos.ensure("smollm2", args.zoo)
    except SmolLM2Error as exc:
        raise SystemExit(f"error: {exc}") from None
    zoo, runs = args.zoo.resolve(), args.runs.resolve()
    meta = json.loads((zoo / "zoo.json").read_text())
    info = machine_info()
    cfgs = configs(zoo, runs, args.budget, args.dfs_budget)
    searched = {label: search(cfgs[label], runs / label, label)
                for label in ("ps", "random", "ps_dfs")}
    measured = runs / "measured.json"  # each part kept once measured; delete a key to redo it
    kept = json.loads(measured.read_text()) if measured.exists() else {}
    if "equal" not in kept:
        with tempfile.TemporaryDirectory() as tmp:
            kept["equal"] = compare_with_mergekit(zoo, Path(tmp))
        measured.write_text(json.dumps(kept, indent=2) + "\n")
    if "scored" not in kept:
        models: list[tuple[str, dict | Path]] = hand_set(zoo)
        models += [(f"searched: {label}", runs / label / "best") for label in searched]
        kept["scored"] = dict(score_recipes(zoo, models, TESTS, batch_size=64))
        measured.write_text(json.dumps(kept, indent=2) + "\n")
    equal, scored = kept["equal"], kept["scored"]
    text = render(command, info, meta, equal, scored, searched, cfgs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_out = tempfile.mkstemp(dir=args.out.parent, prefix=f".{args.out.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp_out, 0o644)
    os.replace(tmp_out, args.out)
    print(text)
    print(f"wrote {args.out}")


def bench_tables() -> list[str]:
    """The tables of the two merge benchmarks, with their commands, as they were written."""
    out = []
    for name, what in (("bench_merge_smollm2.md", "SmolLM2-135M experts (real)"),
                       ("bench_merge.md", "synthetic ~106M bf16 Llama family")):
        path = ROOT / "results" / name
        if not path.exists():
            out += [f"{what}: not measured yet (`results/{name}` missing).", ""]
            continue
        text = path.read_text().splitlines()
        table = [line for line in text if line.startswith("|")]
        cmd = next((line for line in text if line.startswith("Command:")), "")
        model = next((line for line in text if line.startswith("- Model:")), "")
        out += [f"{what} (`results/{name}`; {cmd}):", "", model.removeprefix("- "), "",
                *table, ""]
    return out


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _acc(scores: dict[str, float]) -> list[str]:
    return [f"{scores[s]:.3f}" for s in SKILLS]


def render(command: str, info: list[str], meta: dict, equal: list[dict],
           scored: dict[str, dict], searched: dict[str, dict], cfgs: dict[str, dict]) -> str:
    settings = meta["settings"]
    lines = [
        "# SmolLM2-135M: experts, merges and searches on a real pretrained model", "",
        f"Command: `{command}`", "", *(f"- {line}" for line in info),
        "- Scores: lm-eval exact match (every answer token the greedy choice) on held-out "
        "items no expert trained on and no search saw: 300 two-digit additions (`add`), "
        "300 numbers 0-999 from English into French words (`french`), and the 300 held-out "
        "sums in French (`add_french`, no expert trained on it). Standard error of a score p is "
        "sqrt(p(1-p)/300) ≤ 0.029.", "",
        "## The experts", "",
        "Full fine-tunes of every weight (AdamW, batch 16, loss on answer tokens) from the "
        "de-quantised SmolLM2-135M-Instruct, on generated items disjoint from every scored "
        "one.", "",
        _row(["model", "training", *SKILLS]), _row(["---"] * (2 + len(SKILLS))),
    ]
    for name in ("base", "math", "french"):
        label = name if name == "base" else f"{name} expert"
        s = settings.get(name)
        how = (f"{s['steps']} steps at lr {s['lr']:g}, {meta['train_seconds'][name]:.0f} s"
               if s else "-")
        lines.append(_row([label, how, *_acc(scored[label])]))
    lines += ["", f"Expert build total (conversion excluded): {meta['seconds']:.0f} s "
              "(`evomerge build-zoo smollm2_zoo --kind smollm2`).", ""]
    if equal:
        lines += [
            "## evomerge merge vs mergekit on the real checkpoints", "",
            "Both tools given the same mergekit YAML (math weight 0.7, french 0.6; TIES "
            "density 0.5; task arithmetic and TIES over the base); float32 checkpoints in. "
            "float32 out: the same weights is the bar. bfloat16 out: mergekit rounds the inputs "
            "to bf16 and computes step by step in it; evomerge computes in float32 and rounds "
            "once, so by default they differ by rounding (README, Precision); with "
            "`--match-mergekit-precision` evomerge repeats mergekit's steps. ulps: differences "
            "in units in the last place of the larger of the two values, at the stored "
            "precision; large counts come from cancellation (a small result of large inputs, "
            "where rounding the inputs first moves it by many of its own ulps).", "",
            _row(["method", "dtype", "evomerge flags", "elements differing",
                  "of them within 1 ulp", "max abs diff", "max ulps", "where", "evomerge s",
                  "mergekit s"]),
            _row(["---"] * 10)]
        for r in equal:
            one = r.get("within_one_ulp")
            lines.append(_row([r["method"], r["dtype"], f"`{r['flags']}`" if r["flags"] else "",
                               f"{r['differing']:.2e}", "-" if one is None else f"{one:.1%}",
                               f"{r['max_abs']:.2e}",
                               f"{r['max_ulps']:.0f}" if r["dtype"] != "float32" else "-",
                               r["worst_tensor"] or "-",
                               f"{r['evomerge_s']:.1f}", f"{r['mergekit_s']:.1f}"]))
        for r in equal:
            if r.get("at_ties"):
                differ, tied = r["at_ties"]
                lines += ["", f"TIES, float32: of the {differ:,} entries that differ, {tied:,} "
                          "sit where an expert's task-vector magnitude ties its top-k threshold "
                          "(k = int(0.5·n)). There mergekit keeps whichever tied entries its "
                          "argsort puts first, evomerge the lowest indices (docs/design.md §3; "
                          "evomerge.kernels.float32); fine-tuning from de-quantised weights makes "
                          "such ties common, where random synthetic weights have none."]
        extra = {(r["method"], r["dtype"]): (r["only_evomerge"], r["only_mergekit"])
                 for r in equal if r["only_evomerge"] or r["only_mergekit"]}
        lines += ["", f"Tensors only one tool wrote: {extra or 'none'} (of "
                  f"{equal[0]['tensors']} each).", ""]
    lines += ["## Hand-set merges and searched recipes (held-out)", "",
              "Linear at 0.5 each is task arithmetic at 0.5 each (θ_b + ½τ₁ + ½τ₂ = ½θ₁ + ½θ₂), "
              "and SLERP between two fine-tunes this close to each other moves the weights "
              "as linear does: their rows agree to every item. Searched rows: the best trial of "
              "each search by its worst skill on the search items, exported and re-scored.", "",
              _row(["model", *SKILLS, "worst of add, french"]), _row(["---"] * 5)]
    for name, s in scored.items():
        lines.append(_row([name, *_acc(s), f"{min(s['add'], s['french']):.3f}"]))
    worst = {name: min(s["add"], s["french"]) for name, s in scored.items()}
    hand = max((n for n in worst if not n.startswith("searched")), key=worst.__getitem__)
    top_add = max(s["add"] for n, s in scored.items()
                  if n not in ("base", "math expert", "french expert"))
    found = max((n for n in worst if n.startswith("searched")), key=worst.__getitem__)
    lines += ["", f"Reading: the best hand-set merge by the worst skill is {hand} "
              f"({worst[hand]:.3f}); the best searched one is {found.removeprefix('searched: ')} "
              f"({worst[found]:.3f}). One standard error at 300 items is about 0.027. The "
              f"best addition of any merge is {top_add:.3f}, against the math expert's own "
              f"{scored['math expert']['add']:.3f}: with two experts on disjoint skills, plain "
              "task arithmetic is already close to what the experts hold."]
    lines += ["", "## The searches", "",
              _row(["search", "controller", "evaluations (full fidelity)", "Ray workers",
                    "wall s", "evaluations / hour", "best: search worst, add, french",
                    "best: held-out add, french", "best recipe"]), _row(["---"] * 9)]
    for label, data in searched.items():
        best = data["best"]
        wall = data["seconds"]["wall"]
        obj, held = best["objectives"], best["heldout"]
        lines.append(_row([
            label, cfgs[label]["controller"]["kind"],
            f"{data['trials']} ({data['trials'] - data['low_fidelity']})",
            data["workers"]["count"], f"{wall:.0f}", f"{data['trials'] / wall * 3600:.0f}",
            ", ".join(f"{obj[k]:.3f}" for k in ("worst", "add", "french")),
            ", ".join(f"{held[k]:.3f}" for k in ("add", "french")),
            "`" + best["recipe"].replace("|", "\\|") + "`"]))
    lines += ["", "## Merge speed: this model next to the synthetic one", "",
              *bench_tables(), ""]
    lines += ["", "Commands (from the repository root):", "", "```",
              'pip install -e ".[smollm2,mergekit]"',
              "evomerge search configs/smollm2_ps.yaml --run-dir runs/smollm2_ps",
              "evomerge search configs/smollm2_ps_dfs.yaml --run-dir runs/smollm2_ps_dfs",
              command, "```", ""]
    lines += ["PS recipes: task-arithmetic weights of math | french per third of the layers. "
              "The PS+DFS route is the PS winner's 30 layers (`0.L` = layer L of source 0). "
              "Each run's best is exported to `<run>/best/` (model, `evomerge_recipe.yaml`, "
              "`mergekit_config.yml`).", "",
              "No GPU was lent to the session that wrote this file: the GPU comparison "
              "(evaluations per hour with the sources resident on a CUDA device) is to come.",
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
