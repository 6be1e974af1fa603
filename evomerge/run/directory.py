"""The run directory (docs/design.md §7): where a search keeps its frozen config, trial log,
checkpoint, state summary and lock. Everything that reads a run (resume, report, export)
goes through `RunDirectory`, never through the search that wrote it."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
from pathlib import Path
from typing import IO, Any

from evomerge.atomic import write_bytes_atomic, write_text_atomic
from evomerge.run.errors import RunError
from evomerge.run.trial_log import read_trial_log
from evomerge.search_config import SearchConfig, load_config


class _CheckpointUnpickler(pickle.Unpickler):
    """Checkpoints written while the run was one module (`evomerge.run`) pickled its
    timings as `evomerge.run.Timing`; they load as the dataclass's new home."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("evomerge.run", "Timing"):
            module = "evomerge.run.loop"
        return super().find_class(module, name)


class RunDirectory:
    """The files of one run, by name, and the operations on them that must stay consistent
    (a checkpoint never ahead of the log; one process at a time)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.trials_path = self.path / "trials.jsonl"
        self.checkpoint_path = self.path / "checkpoint.pkl"
        self.state_path = self.path / "state.json"
        self._lock_file: IO[str] | None = None  # held while this process runs the search

    @classmethod
    def existing(cls, path: str | Path) -> RunDirectory:
        """A directory that holds a run (its frozen config), or a RunError saying it does not."""
        run_dir = cls(path)
        if not run_dir.config_path.exists():
            raise RunError(f"{run_dir.path}: not a run directory (no config.yaml)")
        return run_dir

    def read_config(self) -> SearchConfig:
        """The config the run was frozen with."""
        return load_config(self.config_path, frozen=True)

    def write_config(self, cfg: SearchConfig) -> None:
        """Freeze `cfg` as the run's config (the directory is created if needed)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_path, cfg.to_yaml())

    def read_log(self, repair: bool = False) -> list[dict[str, Any]]:
        """The trial lines (`repair`: cut a torn last line off; only the lock holder may)."""
        return read_trial_log(self.trials_path, repair)

    def read_state(self) -> dict[str, Any] | None:
        """The small summary written beside each checkpoint (no controller state)."""
        if not self.state_path.exists():
            return None
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise RunError(f"{self.state_path}: unreadable ({exc})") from None

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint (controller state, outstanding candidates, counts), if any."""
        if not self.checkpoint_path.exists():
            return None
        try:
            with open(self.checkpoint_path, "rb") as f:
                return _CheckpointUnpickler(f).load()
        except Exception as exc:
            raise RunError(f"{self.checkpoint_path}: unreadable checkpoint ({exc})") from None

    def write_checkpoint(self, checkpoint: dict[str, Any], summary: dict[str, Any]) -> None:
        """The checkpoint, then its summary (`state.json`, with the checkpoint's size), each
        replaced atomically. The log must already be flushed up to `checkpoint['trials']`."""
        blob = pickle.dumps(checkpoint)
        write_bytes_atomic(self.checkpoint_path, blob)
        write_text_atomic(self.state_path, json.dumps(
            {"trials": checkpoint["trials"], "checkpoint_bytes": len(blob), **summary}) + "\n")

    def check_log(self, logged: int, checkpointed: int | None) -> None:
        """The log must hold every trial the checkpoint counts."""
        if checkpointed is not None and logged < checkpointed:
            raise RunError(
                f"{self.trials_path}: holds {logged} trial line(s) but the checkpoint "
                f"records {checkpointed} finished trials: the log was truncated, replaced or "
                "deleted. Restore it from a backup; without it the run cannot continue "
                "exactly or report its front (start a new run with another --run-dir)")

    def lock(self) -> None:
        """One process per run directory: a second search or resume on it would interleave
        trial lines and break the log. The lock dies with its process (kill -9 included)."""
        if self._lock_file is not None or not self.path.is_dir():
            return
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise RunError(f"{self.path}: another evomerge process (pid {holder}) is running "
                           "this search; wait for it to finish or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        """Release the lock (closing the file releases it)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


__all__ = ["RunDirectory"]
