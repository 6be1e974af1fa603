"""`evomerge report` for people: the run's counts and its Pareto front as an aligned table
with rounded numbers (`--json` keeps every digit for scripts)."""

from __future__ import annotations

from typing import Any


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in
           [header, *rows]]
    return [fmt[0], "  ".join("-" * w for w in widths), *fmt[1:]]


def format_report(data: dict[str, Any]) -> str:
    out = [f"{data['name']} ({data['controller']}): {data['trials']}/{data['budget']} trials, "
           f"{data['failed']} failed, {data['cache_hits']} answered from the cache "
           "(repeated recipes)"]
    secs = data["seconds"]["evaluation"]
    if data["trials"]:
        out.append(f"evaluation time {secs:.1f} s ({secs / data['trials']:.2f} s per trial)")
    front = data["front"]
    if not front:
        out.append("no successful trial yet: no front")
        return "\n".join(out) + "\n"
    names = list(front[0]["objectives"])
    header = ["trial", *[f"{n} (search)" for n in names], *[f"{n} (held-out)" for n in names]]
    rows = [[str(e["trial"]), *[_num(e["objectives"].get(n)) for n in names],
             *[_num((e["heldout"] or {}).get(n)) for n in names]] for e in front]
    out += ["", f"Pareto front: {len(front)} trial(s)", *_table(header, rows)]
    hv = data["hypervolume"]
    if hv["value"] is not None:
        ref = ", ".join(_num(v) for v in hv["reference_point"])
        out.append(f"hypervolume {_num(hv['value'])} (reference point {ref})")
    best = data["best"]
    if best:
        out.append(f"best by {names[0]}: trial {best['trial']} (export it with "
                   f"`evomerge export {data['run_dir']} --trial {best['trial']} --to DIR`)")
    return "\n".join(out) + "\n"
