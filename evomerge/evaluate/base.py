"""What every evaluator is: named metrics known up front, and per split a score per metric
plus per-sample scores (what M2N2's competition for data points needs).

Evaluators are built once per worker and then score one live model after another: whatever
does not depend on the weights (data, tokenisation, lm-eval task objects) is prepared at
construction, so a candidate costs its forward passes and little else.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

# search: the controller's fitness; validation: choosing the best; heldout: the test split,
# the figures reported (docs/design.md §7.5)
Split = Literal["search", "validation", "heldout"]
SPLITS: tuple[Split, ...] = ("search", "validation", "heldout")


def leading(n: int, fraction: float) -> int:
    """How many leading items a fraction of n keeps (at least one)."""
    return n if fraction >= 1 else max(1, min(n, int(np.ceil(fraction * n))))


class EvaluatorError(ValueError):
    """An evaluator that cannot be built or run; the message names the file or field."""


@dataclass
class Evaluation:
    """One split's scores: `metrics` by name, and for metrics that have them, per-sample scores
    (higher is better, in [0, 1]) in a fixed sample order."""

    metrics: dict[str, float]
    samples: dict[str, np.ndarray] = field(default_factory=dict)


class Evaluator(ABC):
    """Scores a live model on a split. `metrics()` is known before any evaluation, so a config
    whose objective names a metric nobody produces fails before the search starts."""

    # whether `evaluate` takes `items` (the anchor-point fidelity scores chosen items only)
    chooses_items: bool = False

    def __init__(self, name: str):
        self.name = name

    @abstractmethod
    def metrics(self) -> list[str]:
        """Metric names this evaluator reports, so configs can be checked before any run."""

    @abstractmethod
    def evaluate(self, model: Any, tokenizer: Any, split: Split, fraction: float = 1.0,
                 items: dict[str, list[int]] | None = None) -> Evaluation:
        """Metrics and per-sample scores; `fraction` < 1 scores the leading share of the
        search split only (multi-fidelity rungs). `items` (evaluators that `chooses_items`):
        metric name → positions in its per-sample scores on the split; only those items are
        scored, and `samples[m]` holds their scores in that order."""


def chosen_items(items: dict[str, list[int]], metric_group: Any) -> dict[str, list[int]]:
    """Per group of metrics scored together (an lm-eval task, a data file), the sorted union
    of the positions its requested metrics want: what to score once for all of them."""
    out: dict[str, set[int]] = {}
    for metric, positions in items.items():
        out.setdefault(metric_group(metric), set()).update(int(p) for p in positions)
    return {g: sorted(p) for g, p in out.items()}


def pick_items(scored: dict[str, np.ndarray], union: dict[str, list[int]],
               items: dict[str, list[int]], metric_group: Any, where: str
               ) -> dict[str, np.ndarray]:
    """Each requested metric's scores at its own positions, out of its group's union."""
    out = {}
    for metric, positions in items.items():
        if metric not in scored:
            raise EvaluatorError(f"{where}: metric {metric!r} has no per-item scores")
        at = {p: i for i, p in enumerate(union[metric_group(metric)])}
        out[metric] = np.asarray(scored[metric])[[at[int(p)] for p in positions]]
    return out


class ForwardTimer:
    """Seconds spent inside a model's forward calls (generation steps included), to tell an
    evaluator's own overhead from the model's work."""

    def __init__(self, model: Any):
        self.seconds = 0.0
        self.calls = 0
        self._t0 = 0.0
        self._handles = [model.register_forward_pre_hook(self._pre),
                         model.register_forward_hook(self._post)]

    def _pre(self, *_: Any) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def close(self) -> None:
        """Remove the hooks, so the model runs untimed again."""
        for h in self._handles:
            h.remove()


# --- data files ------------------------------------------------------------------------------
def read_records(path: str | Path, where: str) -> list[dict[str, Any]]:
    """Lines of a jsonl file (or, for other files, {"text": line} per non-empty line)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise EvaluatorError(f"{where}: cannot read {p}: {exc.strerror}") from None
    out: list[dict[str, Any]] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvaluatorError(f"{p}: line {i}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise EvaluatorError(f"{p}: line {i}: expected a JSON object")
            out.append(rec)
        else:
            out.append({"text": line})
    if not out:
        raise EvaluatorError(f"{where}: {p} holds no items")
    return out


def cut_validation(n: int, fraction: float, where: str) -> int:
    """How many leading held-out items go to validation (at least one stays for the test)."""
    k = round(n * fraction)
    if not 1 <= k < n:
        raise EvaluatorError(f"{where}.validation_fraction: {n} held-out items cannot be split "
                             f"into validation and test parts (validation_fraction {fraction})")
    return k


def split_records(spec: Any, where: str) -> dict[Split, list[dict[str, Any]]]:
    """Search, validation and held-out (test) items: separate files, or one file cut at
    `heldout_fraction` and the held-out part cut at `validation_fraction`."""
    items = read_records(spec.data, f"{where}.data")
    if spec.heldout_data is not None:
        out: dict[Split, list[dict[str, Any]]] = {
            "search": items, "heldout": read_records(spec.heldout_data, f"{where}.heldout_data")}
    else:
        cut = len(items) - max(1, round(len(items) * spec.heldout_fraction))
        if cut < 1:
            raise EvaluatorError(f"{where}.data: {len(items)} items cannot be split into "
                                 f"search and held-out parts (heldout_fraction "
                                 f"{spec.heldout_fraction})")
        out = {"search": items[:cut], "heldout": items[cut:]}
    if spec.validation_data is not None:
        out["validation"] = read_records(spec.validation_data, f"{where}.validation_data")
    elif spec.validation_fraction is not None:
        held = out["heldout"]
        k = cut_validation(len(held), spec.validation_fraction, where)
        out["validation"], out["heldout"] = held[:k], held[k:]
    return out


def field_of(rec: dict[str, Any], name: str, path: str, index: int) -> Any:
    """A field of a data item, or an error naming the file and item when it is missing."""
    if name not in rec:
        raise EvaluatorError(f"{path}: item {index} has no field {name!r}")
    return rec[name]
