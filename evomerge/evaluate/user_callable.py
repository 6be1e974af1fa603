"""User-defined evaluators: `module:function(model, tokenizer, split=..., **options)`.

The function returns {metric: value}, or ({metric: value}, {metric: per-sample scores}); every
metric it declares in the config must be among them, so objectives can be checked up front.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.evaluate.base import Evaluation, Evaluator, EvaluatorError, Split


class CallableEvaluator(Evaluator):
    """Scores a model with the user's own `module:function`, imported once at construction."""
    def __init__(self, spec: Any, origin: str = "<config>"):
        super().__init__(spec.name)
        self.spec = spec
        where = f"{origin}: evaluators.{spec.name}.function"
        for p in spec.python_path:
            if not Path(p).is_dir():
                raise EvaluatorError(f"{origin}: evaluators.{spec.name}.python_path: {p} is not "
                                     "a directory")
            if p not in sys.path:
                sys.path.insert(0, p)
        module_name, _, attr = spec.function.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise EvaluatorError(f"{where}: cannot import {module_name!r} ({exc})") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise EvaluatorError(f"{where}: {module_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise EvaluatorError(f"{where}: {spec.function} is not callable")
        self.fn = obj

    def metrics(self) -> list[str]:
        """The metrics the config declares the function returns."""
        return list(self.spec.metrics)

    def evaluate(self, model: Any, tokenizer: Any, split: Split, fraction: float = 1.0,
                 items: dict[str, list[int]] | None = None) -> Evaluation:
        """Call the function and check it returned every declared metric."""
        extra = {"fraction": fraction} if fraction < 1 else {}
        out = self.fn(model, tokenizer, split=split, **extra, **self.spec.options)
        metrics, samples = (out if isinstance(out, tuple) and len(out) == 2 else (out, {}))
        if not isinstance(metrics, dict):
            raise EvaluatorError(f"evaluators.{self.name}: {self.spec.function} returned "
                                 f"{type(metrics).__name__}, expected a dict of metrics")
        missing = [m for m in self.spec.metrics if m not in metrics]
        if missing:
            raise EvaluatorError(f"evaluators.{self.name}: {self.spec.function} did not return "
                                 f"the declared metric {missing[0]!r}")
        return Evaluation({k: float(v) for k, v in metrics.items()},
                          {k: np.asarray(v, dtype=np.float32) for k, v in samples.items()})
