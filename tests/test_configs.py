"""The shipped search configs and the README's config example stay runnable."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.run.search_run import SearchRun
from evomerge.search_config import load_config

ROOT = Path(__file__).resolve().parent.parent
# every shipped search config runs here, except the cluster example (GPUs and hub models) and
# the SmolLM2 ones (the smollm2 extra and ~10 minutes of fine-tuning; parsed below)
SEARCH_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if "controller:" in
                        p.read_text() and not p.stem.startswith(("cluster_", "smollm2_")))


def test_there_are_search_configs_to_check():
    names = {p.stem for p in SEARCH_CONFIGS}
    assert {"digits_scratch_m2n2", "digits_scratch_m2n2_pcorrect", "digits_scratch_cmaes",
            "digits_scratch_ga", "digits_pretrained_m2n2", "tiny_merge_ps",
            "tiny_merge_m2n2", "tiny_merge_dfs", "tiny_merge_ps_dfs"} <= names


@pytest.fixture(scope="module")
def example_zoo(tmp_path_factory, skill_zoo) -> Path:
    """`evomerge build-zoo zoo`, as the merge configs expect it in the current directory,
    and the quickstart's skill zoo beside it (built once per session)."""
    from evomerge.models.tiny import build_example_zoo

    root = tmp_path_factory.mktemp("cwd")
    build_example_zoo(root / "zoo")
    (root / "skill_zoo").symlink_to(skill_zoo)
    return root


@pytest.mark.parametrize("path", SEARCH_CONFIGS, ids=lambda p: p.stem)
def test_each_search_config_runs_a_few_trials(path, tmp_path, example_zoo, monkeypatch):
    merge = "kind: merge" in path.read_text()
    if merge:
        monkeypatch.chdir(example_zoo)
    if "ps_best" in path.read_text() and not (example_zoo / "ps_best").exists():
        # the PS stage its header describes: search, then export the best model
        from evomerge.export import export

        SearchRun.create(ROOT / "configs" / "tiny_merge_ps.yaml", example_zoo / "ps_run",
                         budget=8).run()  # its 6 baselines and 2 searched trials
        export(example_zoo / "ps_run", example_zoo / "ps_best", best=True)
    budget = 8 if merge else 40
    if path.stem == "quickstart":
        budget = 12  # past the first rung's promotions, so some trials are scored in full
    elif path.stem.startswith("quickstart"):  # its variants: the 7 baselines and one trial
        budget = 8
    state = SearchRun.create(path, tmp_path / "run", budget=budget).run()
    assert state.trials == budget
    assert state.best is not None
    assert all(0 <= v <= 1 for v in state.best["heldout"].values())
    assert set(state.best["heldout"]) == set(state.best["objectives"])
    if "tracking:" in path.read_text():  # mirrored to the MLflow store in the run directory
        assert (tmp_path / "run" / "mlflow_run.json").exists()


def test_the_readme_config_example_is_a_valid_config(tmp_path):
    text = (ROOT / "README.md").read_text().split("## Search config format")[1]
    block = text.split("```yaml")[1].split("```")[0]
    (tmp_path / "cfg.yaml").write_text(block)
    cfg = load_config(tmp_path / "cfg.yaml")
    assert cfg.controller.kind == "m2n2" and cfg.task.scores == "correct"
    assert cfg.task.init_members == 2


def test_the_readme_merge_example_is_the_shipped_demo_config(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text().split("### Merge searches")[1]
    block = text.split("```yaml")[1].split("```")[0]
    (tmp_path / "readme.yaml").write_text(block)
    monkeypatch.chdir(tmp_path)  # no zoo here: paths stay as written in both
    readme = load_config(tmp_path / "readme.yaml")
    shipped = load_config(ROOT / "configs" / "tiny_merge_ps.yaml")
    assert readme.model_dump() == shipped.model_dump()


def test_the_cluster_example_parses_as_a_gpu_ray_search():
    """Not run (hub models, GPUs, a cluster): parsed and checked for what it promises."""
    cfg = load_config(ROOT / "configs" / "cluster_7b_example.yaml")
    assert cfg.executor.kind == "ray" and cfg.executor.workers == 8
    assert cfg.executor.gpus_per_worker == 1 and cfg.executor.address
    assert cfg.task.candidate.device == "cuda" and cfg.task.candidate.dtype == "bfloat16"
    assert cfg.fidelity is not None and cfg.fidelity.rungs[-1] == 1.0
    ev = cfg.task.evaluators[0]
    assert ev.kind == "lm_eval" and not ev.include_path  # lm-eval's own tasks, by name
    assert all("/" in s and not Path(s).exists() for s in [cfg.task.base, *cfg.task.sources])


@pytest.mark.parametrize("name", ["smollm2_ps", "smollm2_ps_dfs"])
def test_the_smollm2_configs_parse_and_search_their_zoo(name, tmp_path, monkeypatch):
    """Parsed as the run directory's frozen copy is (nothing built); the models and tasks
    they name are the ones `zoo: {kind: smollm2}` builds, scripts/smollm2_results.py runs them."""
    from evomerge.models.smollm2_experts import EXPERTS, SKILLS

    monkeypatch.chdir(tmp_path)
    best = tmp_path / "runs" / "smollm2_ps" / "best"  # the PS search's export, stood in for
    best.mkdir(parents=True)
    (best / "config.json").write_text("{}")
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", frozen=True)
    assert cfg.executor.kind == "ray" and cfg.task.candidate.dtype == "float32"
    names = {Path(s).name for s in cfg.task.sources}
    assert names - {"best"} <= set(EXPERTS)
    ev = cfg.task.evaluators[0]
    assert {t.removesuffix("_search") for t in ev.tasks} <= set(SKILLS)
    assert [t.replace("_search", "_test") for t in ev.tasks] == ev.heldout_tasks
    assert cfg.task.objectives[0].combine == "min"
    if name == "smollm2_ps":
        assert cfg.zoo.kind == "smollm2" and Path(cfg.task.base).name == "base"
