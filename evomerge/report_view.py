"""`evomerge report` for people: the run's counts and its Pareto front as an aligned table
with rounded numbers (`--json` keeps every digit for scripts)."""

from __future__ import annotations

from typing import Any


def _num(value: Any) -> str:
    """Four decimals (columns line up), scientific notation for the very large or small."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Numbers right-aligned; a text column (the recipe) left-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {i for i, h in enumerate(header) if h in ("recipe", "baseline")}
    fmt = ["  ".join(c.ljust(w) if i in left else c.rjust(w)
                     for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
           for r in [header, *rows]]
    return [fmt[0], "  ".join("-" * w for w in widths), *fmt[1:]]


def _with_se(entry: dict[str, Any] | None) -> str:
    """A test figure with its standard error, where the run kept per-item scores."""
    if entry is None:
        return "-"
    se = entry.get("se")
    return _num(entry["value"]) + (f" ± {se:.4f}" if se is not None else "")


def _selection_lines(data: dict[str, Any], primary: str) -> list[str]:
    """The baselines, the chosen best with its test figure, and the paired comparison."""
    out: list[str] = []
    baselines = data.get("baselines") or []
    if baselines:
        splits = ["search", *(["validation"] if any(b["validation"] for b in baselines)
                              else []), "test"]
        rows = [[str(b["trial"]), b["name"],
                 *[_num((b[split] or {}).get(primary)) for split in splits],
                 "yes" if b["start"] else "no"] for b in baselines]
        out += ["", f"Baselines: {len(baselines)} hand-set recipe(s), scored first "
                "(start: a starting point of the search)",
                *_table(["trial", "baseline", *[f"{primary} ({split})" for split in splits],
                         "start"], rows)]
    chosen = data.get("chosen")
    if chosen is None:
        return out
    on = data.get("selected_on", "search")
    what = f"baseline {chosen['baseline']!r}" if chosen.get("baseline") else "searched"
    val = (f", validation {_num(chosen['validation'][primary])}"
           if chosen.get("validation") else "")
    out += ["", f"best by {primary}: trial {chosen['trial']} ({what}, chosen on the {on} "
            f"split): test {_with_se(chosen['test'].get(primary))}{val}"]
    if on == "search" and data.get("task") == "merge":
        out.append("  (no validation split: the best was chosen on the items the search saw, "
                   "so its search score flatters it; add validation_tasks or "
                   "validation_fraction to the evaluator)")
    cmp_ = data.get("comparison")
    searched, base = data.get("best_searched"), data.get("best_baseline")
    if cmp_ is not None and searched and base:
        verdict = ("beats it" if cmp_["low"] > 0 else "falls short of it" if cmp_["high"] < 0
                   else "no difference shown")
        p = f"; McNemar exact p {cmp_['p_value']:.3g}" if cmp_.get("p_value") is not None \
            else ""
        out.append(f"best searched trial {searched['trial']} against the best baseline "
                   f"({base['baseline']!r}, trial {base['trial']}), {primary} on the same "
                   f"{cmp_['items']} test items: {cmp_['difference']:+.4f} (95% interval "
                   f"{cmp_['low']:+.4f} to {cmp_['high']:+.4f}; {cmp_['method']}{p}): "
                   f"{verdict}")
        if searched.get("cached") == base["trial"]:
            out.append("  (the search's best is that baseline's own recipe, proposed again)")
    elif searched is None and base is not None:
        out.append("no searched trial was scored on the validation and test splits yet")
    return out


def format_report(data: dict[str, Any]) -> str:
    """The `evomerge report` text for people: counts, timings and the front as a table."""
    out = [f"{data['name']} ({data['controller']}): {data['trials']}/{data['budget']} trials, "
           f"{data['failed']} failed, {data['cache_hits']} answered from the cache "
           "(repeated recipes)"]
    secs = data["seconds"]["evaluation"]
    if data["trials"]:
        wall = data["seconds"].get("wall")
        lead = f"wall time {wall:.0f} s, " if wall else ""
        out.append(f"{lead}evaluation time {secs:.1f} s ({secs / data['trials']:.2f} s per "
                   "trial, summed over workers)")
    if data.get("low_fidelity"):
        out.append(f"{data['low_fidelity']} trial(s) stopped at a lower fidelity rung "
                   "(multi-fidelity; not in the front)")
    use = data.get("workers")
    if use:
        share = ", ".join(f"{w}: {n}" for w, n in use["trials"].items())
        util = f"{100 * use['utilisation']:.0f}%" if use["utilisation"] is not None else "-"
        out.append(f"worker utilisation {util} over {use['count']} worker(s) on "
                   f"{use['nodes']} node(s) (trials per worker: {share})")
    for e in data.get("errors", []):
        out.append(f"  {e['count']} x (first: trial {e['first_trial']}) {e['error'][:300]}")
    front = data["front"]
    if not front:
        out.append("no successful trial, so no front")
        return "\n".join(out) + "\n"
    names = list(front[0]["objectives"])
    validated = any(e.get("validation") for e in front)
    splits = [("search", "objectives"), *([("validation", "validation")] if validated else []),
              ("test", "heldout")]
    header = ["trial", *[f"{n} ({label})" for label, _ in splits for n in names]]
    rows = [[str(e["trial"]), *[_num((e.get(key) or {}).get(n)) for _, key in splits
                                for n in names]] for e in front]
    if any(e.get("recipe") for e in front):
        header.append("recipe")
        for row, e in zip(rows, front, strict=True):
            row.append(e.get("recipe") or "-")
    out += ["", f"Pareto front: {len(front)} trial(s)", *_table(header, rows)]
    hv = data["hypervolume"]
    if hv["value"] is not None:
        point = hv["reference_point"]
        ref = ", ".join(f"{k} {_num(float(v))}" for k, v in point.items()) \
            if isinstance(point, dict) else ", ".join(_num(float(v)) for v in point)
        out.append(f"hypervolume {_num(hv['value'])} (reference point {ref})")
    out += _selection_lines(data, names[0])
    best = data["best"]
    if best:
        hint = (f"export it with `evomerge export {data['run_dir']} --trial {best['trial']} "
                "--to DIR`") if data.get("task") == "merge" else ""
        if data.get("chosen") is None:
            out.append(f"best by {names[0]}: trial {best['trial']}" +
                       (f" ({hint})" if hint else ""))
        elif hint:
            out.append(hint[0].upper() + hint[1:])
    if data.get("best_export"):
        out.append(f"best trial exported to {data['best_export']}")
    if data.get("plots"):
        out.append("plots: " + ", ".join(data["plots"]))
    return "\n".join(out) + "\n"
