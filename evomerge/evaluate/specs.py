"""What a search config may say about an evaluator (pydantic only: no torch, no lm-eval).

Each evaluator kind has its own spec, validated with the rest of the config before anything
runs; the implementation (`evomerge.evaluate.<kind>`) is imported only where candidates are
scored. Every evaluator scores a search split, which the controller sees, and a held-out (test)
split, which gives the figures reported; with a validation split (`validation_*`), the best
trial is chosen on it, so the test figure of the chosen trial is not inflated by the choice
(docs/design.md §7.5).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="how objectives refer to this evaluator")


class _SplitFiles(_Spec):
    """A data file split into search and held-out parts: a second file, or a fraction of the
    first (its last items, so the split is stable whatever the seed). The validation split is
    a third file, or the leading `validation_fraction` of the held-out items."""

    data: str
    heldout_data: str | None = None
    heldout_fraction: float = Field(0.5, gt=0, lt=1)
    validation_data: str | None = None
    validation_fraction: float | None = Field(None, gt=0, lt=1)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(1024, ge=2, description="tokens per forward window")


class LMEvalSpec(_Spec):
    """Config of an lm-eval harness evaluator: tasks, held-out split, HFLM and lm-eval options."""
    kind: Literal["lm_eval"]
    tasks: list[str] = Field(min_length=1, description="task names or task YAML paths")
    # held-out split: the same tasks' last documents, or other tasks (same order, same
    # metrics), e.g. the test-split twins of validation-split tasks
    heldout_tasks: list[str] | None = None
    heldout_fraction: float | None = Field(None, gt=0, lt=1)
    # validation split (choosing the best): other tasks (paired with `tasks` in order), or
    # the leading share of the held-out documents (the rest stay the test split)
    validation_tasks: list[str] | None = None
    validation_fraction: float | None = Field(None, gt=0, lt=1)
    include_path: list[str] = Field(default_factory=list)
    # index lm-eval's built-in tasks too (~4 s per start); None: only when no include path
    include_defaults: bool | None = None
    batch_size: int | str = 8
    # anything else HFLM takes (max_length, max_batch_size, truncation, ...)
    model_options: dict[str, Any] = Field(default_factory=dict)
    # passed to lm_eval.simple_evaluate as is: num_fewshot, limit, apply_chat_template,
    # system_instruction, fewshot_as_multiturn, gen_kwargs, bootstrap_iters, seeds, ...
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> LMEvalSpec:
        if self.heldout_tasks is not None and self.heldout_fraction is not None:
            raise ValueError("give heldout_tasks or heldout_fraction, not both")
        if self.heldout_tasks is None and self.heldout_fraction is None:
            raise ValueError("heldout_tasks or heldout_fraction: the held-out split is required "
                             "(the front is re-scored on data the search never saw)")
        if self.heldout_tasks is not None and len(self.heldout_tasks) != len(self.tasks):
            raise ValueError(f"heldout_tasks: {len(self.heldout_tasks)} tasks for "
                             f"{len(self.tasks)} search tasks (they pair up in order)")
        if self.validation_tasks is not None and self.validation_fraction is not None:
            raise ValueError("give validation_tasks or validation_fraction, not both")
        if self.validation_tasks is not None and len(self.validation_tasks) != len(self.tasks):
            raise ValueError(f"validation_tasks: {len(self.validation_tasks)} tasks for "
                             f"{len(self.tasks)} search tasks (they pair up in order)")
        return self

    @property
    def has_validation(self) -> bool:
        """Whether this evaluator scores a validation split."""
        return self.validation_tasks is not None or self.validation_fraction is not None


class PerplexitySpec(_SplitFiles):
    """Per-document negative log-likelihood on a text file (one document per line) or a
    jsonl file (`text_field` of each line)."""

    kind: Literal["perplexity"]
    text_field: str = "text"

    @property
    def has_validation(self) -> bool:
        """Whether this evaluator scores a validation split."""
        return self.validation_data is not None or self.validation_fraction is not None


class ClassificationSpec(_SplitFiles):
    """Accuracy on a labelled jsonl: the predicted label is the one whose text the model
    finds most likely after the prompt."""

    kind: Literal["classification"]
    text_field: str = "text"
    label_field: str = "label"
    labels: list[str] | None = Field(None, min_length=2,
                                     description="label texts; default: those in the data")
    template: str = Field("{text}", description="prompt, formatted with the item's fields")
    label_prefix: str = " "

    @property
    def has_validation(self) -> bool:
        """Whether this evaluator scores a validation split."""
        return self.validation_data is not None or self.validation_fraction is not None


class CallableSpec(_Spec):
    """A user function `module:function(model, tokenizer, split=..., **options)` returning
    {metric: value} or ({metric: value}, {metric: per-sample scores})."""

    kind: Literal["callable"]
    function: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    metrics: list[str] = Field(min_length=1, description="the metrics it returns")
    python_path: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    # the function also answers split="validation" (besides "search" and "heldout")
    validation: bool = False

    @property
    def has_validation(self) -> bool:
        """Whether this evaluator scores a validation split."""
        return self.validation


EvaluatorSpec = Annotated[LMEvalSpec | PerplexitySpec | ClassificationSpec | CallableSpec,
                          Field(discriminator="kind")]
