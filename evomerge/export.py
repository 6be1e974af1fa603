"""Export trials of a merge search as merged model directories, reading the run through its
directory alone (frozen config and trial log), as report does.

A trial's recipe is rebuilt from its logged genome and the run's frozen config (the digest
logged with the trial proves it is the same recipe), then built by the streaming
materialiser, with `evomerge_recipe.yaml` and, where mergekit can express the recipe,
`mergekit_config.yml` inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evomerge.merge.directory import merge_to_directory
from evomerge.merge.options import MergeOptions
from evomerge.mergekit_yaml import mergekit_text
from evomerge.recipe import Recipe, RecipeError
from evomerge.run.directory import RunDirectory
from evomerge.run.errors import RunError
from evomerge.run.trial_log import archive_from_lines, best_line, is_full
from evomerge.search_config import SearchConfig
from evomerge.tasks.registry import build_task, task_objectives


def trial_recipe(files: RunDirectory, cfg: SearchConfig, line: dict[str, Any]) -> Recipe:
    """The recipe a logged trial evaluated, rebuilt from its genome (or, for a baseline its
    space cannot express, from the config's baselines) and checked against the recipe
    digest logged with it."""
    task = build_task(cfg, str(files.config_path), prepare=False)
    if "genome" not in line and "baseline" in line:  # a hand-set recipe outside the space
        found = [b for b in task.baselines() if b.name == line["baseline"]]
        if not found:
            raise RunError(f"{files.config_path}: trial {line['trial']} is the baseline "
                           f"{line['baseline']!r}, which the config no longer lists")
        recipe, what = found[0].payload, f"baseline {line['baseline']!r} is now"
    elif "genome" not in line:
        raise RunError(f"{files.trials_path}: trial {line['trial']} has no logged genome")
    else:
        recipe = task.decode(np.asarray(line["genome"], dtype=np.float64))
        what = f"trial {line['trial']}'s genome decodes to"
    want = line.get("recipe_digest")
    if want is not None and recipe.digest() != want:
        raise RunError(f"{files.config_path}: {what} recipe {recipe.digest()}, but the log "
                       f"says {want}; the config was changed after the run")
    return recipe


def choose_trials(files: RunDirectory, cfg: SearchConfig, trial: int | None, best: bool,
                  front: bool) -> list[dict[str, Any]]:
    """The logged trials to export: one by number, the best by the first objective, or the
    Pareto front (the last two among full-fidelity trials only)."""
    if cfg.task.kind != "merge":
        raise RunError(f"{files.path}: a {cfg.task.kind} run has no merged models to export")
    lines = [x for x in files.read_log() if x["status"] == "ok"]
    if not lines:
        raise RunError(f"{files.trials_path}: no successful trial to export yet")
    objectives, reference = task_objectives(cfg)
    if trial is not None:
        found = [x for x in lines if x["trial"] == trial]
        if not found:
            raise RunError(f"--trial: trial {trial} is not a successful trial of {files.path} "
                           f"(trials 0-{max(x['trial'] for x in lines)})")
        return found
    lines = [x for x in lines if is_full(x)]  # best/front: full fidelity
    if not lines:
        raise RunError(f"{files.trials_path}: no trial scored on the whole search split yet")
    if best:  # on the validation split where the run has one (docs/design.md §7.5)
        chosen = best_line([x for x in lines if "heldout" in x], objectives) or \
            best_line(lines, objectives)
        assert chosen is not None
        return [chosen]
    archive = archive_from_lines(lines, objectives, reference)
    by_trial = {x["trial"]: x for x in lines}
    return [by_trial[e.trial_id] for e in archive.front()]


def export(run_dir: str | Path, to: str | Path, trial: int | None = None, best: bool = False,
           front: bool = False, overwrite: bool = False, shard_size: int = 2 * 1024**3
           ) -> list[Path]:
    """Write the chosen trials as model directories under `to` (one, or one per front
    member); nothing inside the run directory."""
    if sum([trial is not None, best, front]) != 1:
        raise RunError("export: choose one of --trial N, --best or --front")
    files = RunDirectory.existing(run_dir)
    cfg = files.read_config()
    chosen = choose_trials(files, cfg, trial, best, front)
    to = Path(to)
    if to.resolve() == files.path.resolve() or files.path.resolve() in to.resolve().parents:
        raise RunError(f"--to: {to} is inside the run directory {files.path}; export elsewhere")
    if front:
        if to.exists() and any(to.iterdir()) and not overwrite:
            raise RunError(f"{to}: exists and is not empty (pass --overwrite)")
        targets = [to / f"trial-{x['trial']:05d}" for x in chosen]
    else:
        targets = [to]
    recipes = [trial_recipe(files, cfg, x) for x in chosen]
    spec = cfg.task
    for recipe, out in zip(recipes, targets, strict=True):
        out.parent.mkdir(parents=True, exist_ok=True)
        merge_to_directory(recipe, out, MergeOptions(
            overwrite=overwrite, shard_size=shard_size, allow_pickle=spec.allow_pickle,
            allow_download=spec.allow_download, extra_files=_extra_files(recipe, out)))
    return targets


def export_into_run(files: RunDirectory, cfg: SearchConfig, out: Path) -> Path:
    """The run's best trial (first objective, full fidelity) as `out` inside the run
    directory, replaced each time the run completes."""
    (line,) = choose_trials(files, cfg, None, True, False)
    recipe = trial_recipe(files, cfg, line)
    spec = cfg.task
    merge_to_directory(recipe, out, MergeOptions(
        overwrite=True, allow_pickle=spec.allow_pickle, allow_download=spec.allow_download,
        extra_files=_extra_files(recipe, out)))
    return out


def best_recipe_texts(files: RunDirectory, cfg: SearchConfig) -> dict[str, str]:
    """The best trial's recipe as text: evomerge's YAML, and mergekit's where it can say it
    (for trackers, which keep recipes, not models)."""
    (line,) = choose_trials(files, cfg, None, True, False)
    recipe = trial_recipe(files, cfg, line)
    return {"evomerge_recipe.yaml": recipe.to_yaml(), **_extra_files(recipe, None)}


def _extra_files(recipe: Recipe, out: Path | None) -> dict[str, str]:
    """mergekit_config.yml for the model directory `out` (local paths relative to it; None:
    as the recipe has them), when mergekit's format can express the recipe; the evomerge
    recipe is always written."""
    try:
        return {"mergekit_config.yml": mergekit_text(recipe, out)}
    except (RecipeError, ValueError):
        return {}
