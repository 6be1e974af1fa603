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
    left = {i for i, h in enumerate(header) if h == "recipe"}
    fmt = ["  ".join(c.ljust(w) if i in left else c.rjust(w)
                     for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
           for r in [header, *rows]]
    return [fmt[0], "  ".join("-" * w for w in widths), *fmt[1:]]


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
    header = ["trial", *[f"{n} (search)" for n in names], *[f"{n} (held-out)" for n in names]]
    rows = [[str(e["trial"]), *[_num(e["objectives"].get(n)) for n in names],
             *[_num((e["heldout"] or {}).get(n)) for n in names]] for e in front]
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
    best = data["best"]
    if best:
        hint = (f" (export it with `evomerge export {data['run_dir']} --trial {best['trial']} "
                "--to DIR`)") if data.get("task") == "merge" else ""
        out.append(f"best by {names[0]}: trial {best['trial']}{hint}")
    if data.get("best_export"):
        out.append(f"best trial exported to {data['best_export']}")
    if data.get("plots"):
        out.append("plots: " + ", ".join(data["plots"]))
    return "\n".join(out) + "\n"
