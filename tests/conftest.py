"""Shared fixtures: small Llama families built on the fly (no downloads)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from evomerge.models.tiny import llama_config, write_family


def pytest_sessionstart(session: pytest.Session) -> None:
    """With EVOMERGE_REQUIRE_MERGEKIT set (CI's mergekit step), a mergekit that does not
    import stops the session: a broken extra must not quietly turn the comparisons into
    skips."""
    if not os.environ.get("EVOMERGE_REQUIRE_MERGEKIT"):
        return
    try:
        import mergekit.config  # noqa: F401
        import mergekit.merge  # noqa: F401
    except Exception as exc:  # any import failure, not only a missing package
        raise pytest.UsageError(f"EVOMERGE_REQUIRE_MERGEKIT is set but mergekit does not "
                                f"import: {type(exc).__name__}: {exc}") from exc


@pytest.fixture(scope="session")
def _ray_tmpdirs() -> Iterator[list[Path]]:
    """Every test's Ray directory, removed again at the end: a Ray process still exiting
    when its test ended may have written one back."""
    dirs: list[Path] = []
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
             _ray_tmpdirs: list[Path]) -> Iterator[Path]:
    """Each test on its own. It starts in an empty directory, with no Ray cluster named in
    the environment, so nothing a user ran in the checkout (`evomerge build-zoo zoo`, a
    cluster they joined) changes a result. Its Ray keeps its session files in a short
    directory of the test's (Ray's socket paths are limited to ~107 characters), removed
    after, and a Ray the test left running in this process is shut down, so it cannot hold
    the next test's CPUs."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tmp = Path(tempfile.mkdtemp(prefix="evr-", dir="/tmp"))
    _ray_tmpdirs.append(tmp)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp))
    yield tmp
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


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


class _Recorder(pickle.Unpickler):
    """Unpickles, noting every module a class or function is taken from."""

    def __init__(self, blob: bytes):
        super().__init__(io.BytesIO(blob))
        self.modules: set[str] = set()

    def find_class(self, module: str, name: str):
        self.modules.add(module.split(".")[0])
        return super().find_class(module, name)


def pickled_modules(blob: bytes) -> set[str]:
    """The top-level modules a pickle takes classes or functions from."""
    r = _Recorder(blob)
    r.load()
    return r.modules
