"""The evaluator registry: one entry per `kind` an evaluator spec may name, so a task builds
any evaluator the same way and a new kind is one entry here plus its module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evomerge.evaluate.base import Evaluator
from evomerge.evaluate.classification import ClassificationEvaluator
from evomerge.evaluate.lm_eval_harness import LMEvalEvaluator
from evomerge.evaluate.perplexity import PerplexityEvaluator
from evomerge.evaluate.user_callable import CallableEvaluator

EVALUATORS: dict[str, Callable[[Any, str], Evaluator]] = {
    "lm_eval": LMEvalEvaluator,
    "perplexity": PerplexityEvaluator,
    "classification": ClassificationEvaluator,
    "callable": CallableEvaluator,
}


def build_evaluator(spec: Any, origin: str = "<config>") -> Evaluator:
    """The evaluator a spec describes; `origin` is the config file its errors name."""
    return EVALUATORS[spec.kind](spec, origin)


__all__ = ["EVALUATORS", "build_evaluator"]
