"""Classification accuracy on a labelled jsonl with a causal LM: the prediction is the label
whose text is most likely after the item's prompt.

Metrics: `accuracy` (per-sample: correct or not) and `p_label` (the probability the model
gives the true label among the labels, per sample: a continuous signal for M2N2).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evomerge.evaluate.base import (
    Evaluation,
    Evaluator,
    EvaluatorError,
    Split,
    chosen_items,
    field_of,
    leading,
    pick_items,
    split_records,
)
from evomerge.evaluate.scoring import continuation_logprobs


class ClassificationEvaluator(Evaluator):
    """Accuracy of a causal LM that picks, per item, the label most likely after its prompt."""

    chooses_items = True

    def __init__(self, spec: Any, origin: str = "<config>"):
        super().__init__(spec.name)
        self.spec = spec
        where = f"{origin}: evaluators.{spec.name}"
        records = split_records(spec, where)
        self.items: dict[Split, list[tuple[str, str]]] = {}
        for s in records:
            path = {"heldout": spec.heldout_data, "validation": spec.validation_data}.get(
                s) or spec.data
            rows = []
            for i, r in enumerate(records[s]):
                label = str(field_of(r, spec.label_field, path, i))
                try:
                    prompt = spec.template.format(**r)
                except KeyError as exc:
                    raise EvaluatorError(f"{where}.template: item {i} of {path} has no field "
                                         f"{exc.args[0]!r}") from None
                rows.append((prompt, label))
            self.items[s] = rows
        self.labels = list(spec.labels) if spec.labels else sorted(
            {lab for rows in self.items.values() for _, lab in rows})
        for s in self.items:
            for i, (_, lab) in enumerate(self.items[s]):
                if lab not in self.labels:
                    raise EvaluatorError(f"{where}.labels: item {i} ({s} split) has label "
                                         f"{lab!r}, not one of {self.labels}")
        self._pairs: dict[Split, list[tuple[list[int], list[int]]]] | None = None

    def metrics(self) -> list[str]:
        """Accuracy, and the true label's probability among the labels (a smoother signal)."""
        return ["accuracy", "p_label"]

    def _tokenised(self, tokenizer: Any) -> dict[Split, list[tuple[list[int], list[int]]]]:
        if self._pairs is None:
            labels = [tokenizer(self.spec.label_prefix + lab, add_special_tokens=False)
                      ["input_ids"] for lab in self.labels]
            self._pairs = {}
            for s in self.items:
                pairs = []
                for prompt, _ in self.items[s]:
                    ctx = tokenizer(prompt)["input_ids"]
                    if not ctx:
                        raise EvaluatorError(f"evaluators.{self.name}: an empty prompt")
                    pairs.extend((ctx, lab) for lab in labels)
                self._pairs[s] = pairs
        return self._pairs

    def evaluate(self, model: Any, tokenizer: Any, split: Split, fraction: float = 1.0,
                 items: dict[str, list[int]] | None = None) -> Evaluation:
        """Score every label after every prompt; per item, correct or not and p(true label)."""
        if items is not None:  # both metrics come from the same items: score their union
            union = chosen_items(items, lambda _: "items")
            scored = self._score(model, tokenizer, split, union.get("items", []))
            return Evaluation(scored.metrics, pick_items(scored.samples, union, items,
                                                         lambda _: "items",
                                                         f"evaluators.{self.name}"))
        n = leading(len(self.items[split]), fraction)
        return self._score(model, tokenizer, split, list(range(n)))

    def _score(self, model: Any, tokenizer: Any, split: Split, chosen: list[int]
               ) -> Evaluation:
        n_labels = len(self.labels)
        every = self._tokenised(tokenizer)[split]
        items = [self.items[split][i] for i in chosen]
        pairs = [every[i * n_labels + j] for i in chosen for j in range(n_labels)]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        sums, _ = continuation_logprobs(model, pairs, self.spec.batch_size, pad)
        ll = np.asarray(sums).reshape(len(items), len(self.labels))
        gold = np.array([self.labels.index(lab) for _, lab in items])
        correct = (ll.argmax(axis=1) == gold).astype(np.float32)
        z = np.exp(ll - ll.max(axis=1, keepdims=True))
        p = (z[np.arange(len(gold)), gold] / z.sum(axis=1)).astype(np.float32)
        return Evaluation({"accuracy": float(correct.mean()), "p_label": float(p.mean())},
                          {"accuracy": correct, "p_label": p})
