"""Shared fixtures: small Llama families built on the fly (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.models.tiny import llama_config, write_family


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> dict[str, Path]:
    """float32 base + three variants, 3 layers, two shards each (exercises the index)."""
    out = tmp_path_factory.mktemp("zoo")
    cfg = llama_config(vocab_size=256, hidden_size=32, num_layers=3, intermediate_size=64,
                       num_heads=4)
    return write_family(out, cfg, ["a", "b", "c"], seed=1, shard_size=60_000)


@pytest.fixture(scope="session")
def zoo_bf16(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("zoo_bf16")
    cfg = llama_config(vocab_size=256, hidden_size=32, num_layers=2, intermediate_size=64,
                       num_heads=4)
    return write_family(out, cfg, ["a", "b"], seed=2, dtype="bfloat16")


@pytest.fixture(scope="session")
def tasks_dir(tmp_path_factory) -> Path:
    """lm-eval task files (two skills, search and test splits) for the zoo's vocabulary."""
    from evomerge.models.tiny_tasks import write_example_tasks

    return write_example_tasks(tmp_path_factory.mktemp("tasks"), vocab_size=256, items=30)


@pytest.fixture(scope="session")
def skill_zoo(tmp_path_factory) -> Path:
    """The quickstart's skill zoo, built once per test session (~45 s on 2 cores)."""
    from evomerge.models.skill_zoo import build_skill_zoo

    out = tmp_path_factory.mktemp("skills") / "skill_zoo"
    build_skill_zoo(out, log=lambda msg: None)
    return out


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
