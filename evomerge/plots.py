"""The run's pictures, drawn from its trial log: best score against evaluations (search
split, with the test score of each new best and the best baseline as reference lines), the
Pareto front (baselines marked), and hypervolume against evaluations. PNG files in
`<run>/plots/`, each written to a temporary name and renamed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evomerge.archive import ParetoArchive


def write_plots(run_dir: Path, lines: list[dict[str, Any]],
                objectives: list[tuple[str, str]], archive: ParetoArchive) -> list[Path]:
    """Draw the run's plots into `<run>/plots/` from its trial log and the archive rebuilt from
    it (`run.trial_log.archive_from_lines`); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [x for x in lines if x["status"] == "ok" and x.get("fidelity", 1.0) >= 1]
    if not ok:
        return []
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []

    fig, axes = plt.subplots(1, len(objectives), figsize=(4.2 * len(objectives), 3.4),
                             squeeze=False)
    for ax, (name, direction) in zip(axes[0], objectives, strict=True):
        sign = 1.0 if direction == "maximize" else -1.0
        xs, best, held_x, held = [], [], [], []
        current = None
        for x in ok:
            v = x["objectives"][name]
            if current is None or sign * v > sign * current:
                current = v
                if name in (x.get("heldout") or {}):
                    held_x.append(x["trial"])
                    held.append(x["heldout"][name])
            xs.append(x["trial"])
            best.append(current)
        ax.plot(xs, best, drawstyle="steps-post", label="best (search split)")
        ax.scatter([x["trial"] for x in ok], [x["objectives"][name] for x in ok], s=4,
                   alpha=0.3, color="grey", label="trials")
        if held:
            ax.scatter(held_x, held, s=14, color="C3", label="test split, when scored")
        _baseline_lines(ax, ok, name, sign)
        ax.set_title(f"{name} ({direction})")
        ax.set_xlabel("evaluations")
    axes[0][0].legend(fontsize=7)
    written.append(_save(fig, out / "best.png"))

    if len(objectives) >= 2:
        names = [n for n, _ in objectives]
        pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))][:3]
        fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.6),
                                 squeeze=False)
        front = archive.front()
        for ax, (i, j) in zip(axes[0], pairs, strict=True):
            ax.scatter([x["objectives"][names[i]] for x in ok],
                       [x["objectives"][names[j]] for x in ok], s=5, alpha=0.3,
                       color="grey", label="trials")
            ax.scatter([e.values[names[i]] for e in front], [e.values[names[j]] for e in front],
                       s=18, color="C3", label="Pareto front")
            base = [x for x in ok if "baseline" in x]
            if base:
                ax.scatter([x["objectives"][names[i]] for x in base],
                           [x["objectives"][names[j]] for x in base], s=30, marker="x",
                           color="C2", label="baselines")
            ax.set_xlabel(names[i])
            ax.set_ylabel(names[j])
        axes[0][0].legend(fontsize=7)
        fig.suptitle("search split; the front over all objectives")
        written.append(_save(fig, out / "front.png"))
    if archive.history:
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        xs = [ok[n - 1]["trial"] for n, _ in archive.history] + [ok[-1]["trial"]]
        ys = [hv for _, hv in archive.history] + [archive.history[-1][1]]
        ax.plot(xs, ys, drawstyle="steps-post")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("hypervolume")
        ax.set_title("hypervolume of the front (search split)")
        written.append(_save(fig, out / "hypervolume.png"))
    return written


def _baseline_lines(ax: Any, ok: list[dict[str, Any]], name: str, sign: float) -> None:
    """The best hand-set baseline as a reference line: search split (dashed) and test
    split (dotted), so a search that ends below what a person would set shows it."""
    base = [x for x in ok if "baseline" in x]
    if not base:
        return
    best = max(base, key=lambda x: sign * x["objectives"][name])
    ax.axhline(best["objectives"][name], color="C2", linestyle="--", linewidth=1,
               label=f"best baseline ({best['baseline']}), search")
    test = (best.get("heldout") or {}).get(name)
    if test is not None:
        ax.axhline(test, color="C2", linestyle=":", linewidth=1, label="that baseline, test")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
