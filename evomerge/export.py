"""Export trials of a merge search as merged model directories.

A trial's recipe is rebuilt from its logged genome and the run's frozen config (the digest
logged with the trial proves it is the same recipe), then built by the streaming
materialiser, with `evomerge_recipe.yaml` and, where mergekit can express the recipe,
`mergekit_config.yml` inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evomerge.archive import Objective, ParetoArchive
from evomerge.merge.streaming import MergeOptions, merge_to_directory
from evomerge.recipe import Recipe, RecipeError
from evomerge.run import RunError, SearchRun
from evomerge.tasks.base import build_task, task_objectives


def trial_recipe(run: SearchRun, line: dict[str, Any]) -> Recipe:
    task = build_task(run.cfg, str(run.dir / "config.yaml"), prepare=False)
    if "genome" not in line:
        raise RunError(f"{run.trials_path}: trial {line['trial']} has no logged genome")
    recipe = task.decode(np.asarray(line["genome"], dtype=np.float64))
    want = line.get("recipe_digest")
    if want is not None and recipe.digest() != want:
        raise RunError(f"{run.dir / 'config.yaml'}: trial {line['trial']}'s genome decodes to "
                       f"recipe {recipe.digest()}, but the log says {want}; the config was "
                       "changed after the run")
    return recipe


def choose_trials(run: SearchRun, trial: int | None, best: bool, front: bool
                  ) -> list[dict[str, Any]]:
    if run.cfg.task.kind != "merge":
        raise RunError(f"{run.dir}: a {run.cfg.task.kind} run has no merged models to export")
    lines = [x for x in run.read_log() if x["status"] == "ok"]
    if not lines:
        raise RunError(f"{run.trials_path}: no successful trial to export yet")
    objectives, reference = task_objectives(run.cfg)
    if trial is not None:
        found = [x for x in lines if x["trial"] == trial]
        if not found:
            raise RunError(f"--trial: trial {trial} is not a successful trial of {run.dir} "
                           f"(trials 0-{max(x['trial'] for x in lines)})")
        return found
    lines = [x for x in lines if x.get("fidelity", 1.0) >= 1]  # best/front: full fidelity
    if not lines:
        raise RunError(f"{run.trials_path}: no trial scored on the whole search split yet")
    if best:
        name, direction = objectives[0]
        sign = 1.0 if direction == "maximize" else -1.0
        return [max(lines, key=lambda x: (sign * x["objectives"][name], -x["trial"]))]
    archive = ParetoArchive([Objective(n, d) for n, d in objectives], reference)
    by_trial = {x["trial"]: x for x in lines}
    for x in lines:
        archive.add(x["trial"], x["objectives"])
    return [by_trial[e.trial_id] for e in archive.front()]


def export(run_dir: str | Path, to: str | Path, trial: int | None = None, best: bool = False,
           front: bool = False, overwrite: bool = False, shard_size: int = 2 * 1024**3
           ) -> list[Path]:
    if sum([trial is not None, best, front]) != 1:
        raise RunError("export: choose one of --trial N, --best or --front")
    run = SearchRun.open(run_dir)
    chosen = choose_trials(run, trial, best, front)
    to = Path(to)
    if to.resolve() == run.dir.resolve() or run.dir.resolve() in to.resolve().parents:
        raise RunError(f"--to: {to} is inside the run directory {run.dir}; export elsewhere")
    if front:
        if to.exists() and any(to.iterdir()) and not overwrite:
            raise RunError(f"{to}: exists and is not empty (pass --overwrite)")
        targets = [to / f"trial-{x['trial']:05d}" for x in chosen]
    else:
        targets = [to]
    recipes = [trial_recipe(run, x) for x in chosen]
    spec = run.cfg.task
    for recipe, out in zip(recipes, targets, strict=True):
        extra = {}
        mk = _mergekit_text(recipe, out)
        if mk is not None:
            extra["mergekit_config.yml"] = mk
        out.parent.mkdir(parents=True, exist_ok=True)
        merge_to_directory(recipe, out, MergeOptions(
            overwrite=overwrite, shard_size=shard_size, allow_pickle=spec.allow_pickle,
            allow_download=spec.allow_download, extra_files=extra))
    return targets


def export_into_run(run: SearchRun, out: Path) -> Path:
    """The run's best trial (first objective, full fidelity) as `out` inside the run
    directory, replaced each time the run completes."""
    (line,) = choose_trials(run, None, True, False)
    recipe = trial_recipe(run, line)
    extra = {}
    mk = _mergekit_text(recipe, out)
    if mk is not None:
        extra["mergekit_config.yml"] = mk
    spec = run.cfg.task
    merge_to_directory(recipe, out, MergeOptions(
        overwrite=True, allow_pickle=spec.allow_pickle, allow_download=spec.allow_download,
        extra_files=extra))
    return out


def _mergekit_text(recipe: Recipe, out: Path) -> str | None:
    """mergekit_config.yml for the model directory `out` (local paths relative to it)."""
    from evomerge.mergekit_yaml import mergekit_text

    try:
        return mergekit_text(recipe, out)
    except (RecipeError, ValueError):
        return None  # not expressible in mergekit's format: the evomerge recipe still is
