"""Which trackers a config asks for (`tracking:`), built with their seam."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.tracking.base import Tracker


def make_trackers(cfg: Any, run_dir: Path, warn: Callable[[str], None],
                  origin: str = "<config>") -> list[Tracker]:
    """The config's trackers; a missing optional package is a config error, named before
    anything runs."""
    spec = cfg.tracking
    out: list[Tracker] = []
    if spec is not None and spec.mlflow is not None:
        try:
            import mlflow  # noqa: F401  (the check only: the tracker imports it on its thread)
        except ImportError:
            raise ConfigError(f"{origin}: tracking.mlflow: needs the mlflow package "
                              "(pip install -e '.[tracking]')") from None
        from evomerge.tracking.mlflow_tracker import MlflowTracker

        out.append(MlflowTracker(spec.mlflow, cfg, run_dir, warn))
    return out


__all__ = ["make_trackers"]
