"""Benchmark: whole-process `evomerge merge` against `mergekit-yaml` on the same recipes.

Why whole-process: a user pays for interpreter start, imports, reading sources, merging and
writing shards, so that is what is timed; per-kernel timings would hide I/O and start-up.

Builds (once, cached under --zoo, with a marker written last so a half-built zoo is rebuilt) a
base and three fine-tune-like variants of a ~100M-parameter bf16 Llama, writes linear, TIES and
DARE-TIES recipes as mergekit YAML (which `evomerge merge` reads as is), and runs each tool in a
fresh process per measurement: wall time (median of --repeats) and peak RSS (max over runs) of
that one child, read by a small wrapper process with getrusage(RUSAGE_CHILDREN). The page cache
cannot be dropped without root, so each tool gets one untimed warm-up run per recipe and both
read their sources from the page cache alike; timed runs of the two tools are interleaved so
drift on a shared machine hits both. The memory-bandwidth floor is bytes read + written over a
copy bandwidth measured in the same run: no merge can be faster than moving its bytes once.

    python scripts/bench_merge.py [--repeats 3] [--methods linear,ties,dare_ties] [--quick]
    python scripts/bench_merge.py --real smollm2_zoo   # a real model: SmolLM2-135M experts

`--real DIR` merges a real model's checkpoints instead: the SmolLM2-135M zoo of
`evomerge build-zoo DIR --kind smollm2` (float32 base and two fine-tuned experts), with the
same recipes (bf16 output), reported to results/bench_merge_smollm2.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from evomerge.benchmarking import (
    FULL,
    METHODS,
    QUICK,
    VARIANTS,
    ZOO_VERSION,
    build_zoo,
    copy_bandwidth,
    count_params,
    machine_info,
    weight_bytes,
    write_recipes,
)

# Runs argv[2:] once, its output to the file argv[1]; prints wall seconds, peak RSS KiB and the
# exit status as JSON. A fresh wrapper per measurement, so RUSAGE_CHILDREN holds one child only.
_WRAPPER = """\
import json, resource, subprocess, sys, time
with open(sys.argv[1], "wb") as log:
    t = time.perf_counter()
    rc = subprocess.run(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"wall": wall, "rss_kib": rss, "rc": rc}))
"""


@dataclass
class Tool:
    """One tool's measurements on one recipe."""

    walls: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def wall(self) -> float | None:
        return statistics.median(self.walls) if self.walls and not self.error else None

    @property
    def rss(self) -> float | None:
        return max(self.rss_mb) if self.rss_mb and not self.error else None


def real_zoo(root: Path) -> tuple[dict[str, Path], tuple[str, ...], int, str]:
    """The SmolLM2 zoo's base and experts as the benchmark's sources."""
    from evomerge.models.source import SourceModel

    root = root.resolve()  # a relative "dir/name" would read as a hub id to mergekit
    dirs = {"base": root / "base", "math": root / "math", "french": root / "french"}
    missing = [str(d) for d in dirs.values() if not (d / "config.json").exists()]
    if missing:
        raise SystemExit(f"--real: {', '.join(missing)} missing; build the zoo first: "
                         f"evomerge build-zoo {root} --kind smollm2")
    base = SourceModel.open(str(dirs["base"]))
    n = sum(e.numel for e in base.entries.values())
    base.close()
    return dirs, ("math", "french"), n, (
        f"SmolLM2-135M-Instruct, a real model ({n:,} parameters, tied embeddings, float32 "
        "checkpoints): its base and the math and french experts fine-tuned from it")


def run_once(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """(wall s, peak RSS MB, exit status) of one fresh process running `cmd`."""
    r = subprocess.run([sys.executable, "-c", _WRAPPER, str(log), *cmd],
                       capture_output=True, text=True, check=True)
    got = json.loads(r.stdout)
    return got["wall"], got["rss_kib"] / 1024, got["rc"]


def tail(path: Path, n: int = 25) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-n:])


def fmt(x: float | None, spec: str) -> str:
    return "failed" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per tool and method")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of methods")
    ap.add_argument("--quick", action="store_true", help="a tiny model, for a smoke run")
    ap.add_argument("--zoo", type=Path,
                    default=Path(tempfile.gettempdir()) / f"evomerge-bench-zoo-v{ZOO_VERSION}",
                    help="cache directory for the source models")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown report (default results/bench_merge.md; --quick writes none "
                         "unless given)")
    ap.add_argument("--no-mergekit", action="store_true", help="time evomerge only")
    ap.add_argument("--real", type=Path, default=None,
                    help="a SmolLM2 zoo (evomerge build-zoo DIR --kind smollm2) to merge "
                         "instead of the synthetic family")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or args.repeats < 1:
        ap.error(f"--methods: choose from {','.join(METHODS)}; --repeats >= 1")
    out_md = args.out or (None if args.quick else Path(
        "results/bench_merge_smollm2.md" if args.real else "results/bench_merge.md"))
    command = shlex.join(["python", "scripts/bench_merge.py", *sys.argv[1:]])

    bindir = Path(sys.executable).parent
    evomerge = str(bindir / "evomerge")
    mergekit = bindir / "mergekit-yaml"
    have_mk = (not args.no_mergekit and importlib.util.find_spec("mergekit") is not None
               and mergekit.exists())

    load_start = os.getloadavg()[0]
    info = machine_info()
    for line in info:
        print(line)
    if args.real:
        zoo, variants, n_params, what = real_zoo(args.real)
    else:
        model = QUICK if args.quick else FULL
        n_params = count_params(model)
        zoo, variants = build_zoo(args.zoo, model, "quick" if args.quick else "full"), VARIANTS
        what = (f"{n_params:,} parameters ({n_params / 1e6:.1f}M) bf16 Llama; a base and three "
                "fine-tune-like variants")
    print(f"model: {what}", flush=True)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write bytes, best of 7, "
          "256 MiB torch copy_)", flush=True)
    if not have_mk:
        print("mergekit: not timed (absent or --no-mergekit)")
    print("note: page cache cannot be dropped; one untimed warm-up run per tool and recipe, so "
          "both tools read sources from the page cache alike", flush=True)

    work = Path(tempfile.mkdtemp(prefix="evomerge-bench-"))
    rows = []
    try:
        recipes = write_recipes(zoo, work, list(variants))
        for method in methods:
            recipe = recipes[method]
            inputs = list(variants) + ([] if method == "linear" else ["base"])
            read = sum(weight_bytes(zoo[k]) for k in inputs)
            cmds = {"evomerge": [evomerge, "merge", str(recipe), str(work / "out-evomerge"),
                                 "--overwrite", "--no-progress"]}
            if have_mk:
                cmds["mergekit"] = [str(mergekit), str(recipe), str(work / "out-mergekit")]
            tools = {t: Tool() for t in cmds}
            # run 0 is the warm-up; timed runs alternate between the tools
            for rep in range(args.repeats + 1):
                for name, cmd in cmds.items():
                    tool = tools[name]
                    if tool.error:
                        continue
                    out_dir = work / f"out-{name}"
                    shutil.rmtree(out_dir, ignore_errors=True)  # both write a fresh directory
                    log = work / f"{method}-{name}-{rep}.log"
                    wall, rss, rc = run_once(cmd, log)
                    if rc:
                        tool.error = f"exit {rc}: {shlex.join(cmd)}\n{tail(log)}"
                        print(f"{method} {name}: FAILED ({tool.error})", flush=True)
                        continue
                    if rep == 0:
                        print(f"{method:9s} {name:8s} warm-up {wall:7.2f} s", flush=True)
                        continue
                    tool.walls.append(wall)
                    tool.rss_mb.append(rss)
                    print(f"{method:9s} {name:8s} run {rep}  {wall:7.2f} s  {rss:7.0f} MB",
                          flush=True)
            sizes = {t: weight_bytes(work / f"out-{t}") for t in cmds if not tools[t].error}
            written = next(iter(sizes.values()), 0)
            if len(set(sizes.values())) > 1:
                print(f"note: output sizes differ between tools: {sizes}", flush=True)
            floor = (read + written) / bandwidth
            rows.append((method, tools, read, sizes, floor))
            ev = tools["evomerge"]
            mk = tools.get("mergekit")
            ratio = (mk.wall / ev.wall) if mk and mk.wall and ev.wall else None
            print(f"==> {method}: evomerge {fmt(ev.wall, '.2f')} s / {fmt(ev.rss, '.0f')} MB; "
                  f"mergekit {fmt(mk.wall if mk else None, '.2f')} s / "
                  f"{fmt(mk.rss if mk else None, '.0f')} MB; speed-up {fmt(ratio, '.2f')}x; "
                  f"floor {floor:.3g} s ({(read + written) / 1e6:.0f} MB moved)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    info.append(f"1-min load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end "
                f"(this run keeps about 1-2 busy; more means something else shared the cores)")
    text = report(command, info, what, bandwidth, args.repeats, have_mk, rows)
    print()
    print(text)
    if out_md is not None:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_md.parent, prefix=f".{out_md.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_md)
        print(f"wrote {out_md}")


def report(command: str, info: list[str], what: str, bandwidth: float, repeats: int,
           have_mk: bool, rows: list) -> str:
    na = "n/a"
    lines = [
        "# Merge benchmark: evomerge vs mergekit",
        "",
        f"Command: `{command}`",
        "",
        *(f"- {line}" for line in info),
        f"- Model: {what}; recipes are mergekit YAML given to both tools unchanged "
        "(weight 0.34 each for linear; weight 0.4, density 0.5 for ties and dare_ties).",
        f"- Measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s (bytes read + written, best of "
        "7 torch copy_ of 256 MiB); bandwidth floor = (bytes read + bytes written) / bandwidth.",
        f"- Wall time: whole process, median of {repeats}; peak RSS: max over those runs. The "
        "page cache cannot be dropped, so each tool had one untimed warm-up run per recipe and "
        "both read sources from the page cache; timed runs of the two tools alternate.",
        "- Defaults for both tools on CPU: `evomerge merge RECIPE OUT --overwrite --no-progress`, "
        "`mergekit-yaml RECIPE OUT`.",
        "",
        "| method | evomerge wall s (median) | evomerge peak RSS MB | mergekit wall s | "
        "mergekit peak RSS MB | speed-up (mergekit/evomerge) | bandwidth floor s |",
        "|---|---|---|---|---|---|---|",
    ]
    details = []
    errors = []
    for method, tools, read, sizes, floor in rows:
        ev = tools["evomerge"]
        mk = tools.get("mergekit")
        if mk is None:
            mk_wall = mk_rss = speed = na
        else:
            mk_wall, mk_rss = fmt(mk.wall, ".2f"), fmt(mk.rss, ".0f")
            speed = f"{mk.wall / ev.wall:.2f}x" if mk.wall and ev.wall else "failed"
        lines.append(f"| {method} | {fmt(ev.wall, '.2f')} | {fmt(ev.rss, '.0f')} | {mk_wall} | "
                     f"{mk_rss} | {speed} | {floor:.3g} |")
        runs = "; ".join(f"{name} " + ", ".join(f"{w:.2f}" for w in t.walls)
                         for name, t in tools.items() if t.walls)
        wrote = ", ".join(f"{name} {n / 1e6:.1f} MB ({n:,} B)" for name, n in sizes.items())
        details.append(f"- {method}: read {read / 1e6:.1f} MB ({read:,} B); written: {wrote}; "
                       f"runs (s): {runs}")
        errors += [f"- {method} {name}: {t.error}" for name, t in tools.items() if t.error]
    if not have_mk:
        lines.append("")
        lines.append("mergekit was not importable (or --no-mergekit): its columns are n/a.")
    lines += ["", "Bytes moved and individual runs:", "", *details]
    if errors:
        lines += ["", "Failures:", "", "```", *errors, "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
