"""Perplexity on a text or jsonl file: per-document negative log-likelihood.

Metrics: `perplexity` (exp of the token-weighted mean NLL) and `nll` (that mean). Per-sample
scores, for both, are each document's geometric-mean token probability exp(−NLL_doc / n_doc):
in (0, 1], higher is better, as M2N2's competition expects.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evomerge.evaluate.base import (
    Evaluation,
    Evaluator,
    EvaluatorError,
    Split,
    field_of,
    leading,
    split_records,
)
from evomerge.evaluate.scoring import continuation_logprobs, windows


class PerplexityEvaluator(Evaluator):
    """How well a model predicts the documents of a text or jsonl file (perplexity, NLL)."""
    def __init__(self, spec: Any, origin: str = "<config>"):
        super().__init__(spec.name)
        self.spec = spec
        where = f"{origin}: evaluators.{spec.name}"
        records = split_records(spec, where)
        self.texts = {s: [str(field_of(r, spec.text_field, spec.data, i))
                          for i, r in enumerate(rows)] for s, rows in records.items()}
        self._ids: dict[Split, list[list[int]]] | None = None

    def metrics(self) -> list[str]:
        """Perplexity, and the token-weighted mean NLL it is the exponential of."""
        return ["perplexity", "nll"]

    def _tokenised(self, tokenizer: Any) -> dict[Split, list[list[int]]]:
        if self._ids is None:  # once per worker: the tokenizer never changes
            self._ids = {s: [tokenizer(t)["input_ids"] for t in texts]
                         for s, texts in self.texts.items()}
            short = [i for i, ids in enumerate(self._ids["search"]) if len(ids) < 2]
            if short:
                raise EvaluatorError(f"evaluators.{self.name}: document {short[0]} has fewer "
                                     "than two tokens, so nothing in it can be predicted")
        return self._ids

    def evaluate(self, model: Any, tokenizer: Any, split: Split, fraction: float = 1.0,
                 items: dict[str, list[int]] | None = None) -> Evaluation:
        """NLL of each document over forward windows; per document, its mean token probability."""
        docs = self._tokenised(tokenizer)[split]
        docs = docs[:leading(len(docs), fraction)]
        pairs, owner = [], []
        for d, ids in enumerate(docs):
            for w in windows(ids, self.spec.max_length):
                pairs.append(w)
                owner.append(d)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        sums, counts = continuation_logprobs(model, pairs, self.spec.batch_size, pad)
        nll = np.zeros(len(docs))
        n = np.zeros(len(docs))
        for d, s, c in zip(owner, sums, counts, strict=True):
            nll[d] -= s
            n[d] += c
        n = np.maximum(n, 1)
        mean = float(nll.sum() / n.sum())
        per_doc = np.exp(-nll / n).astype(np.float32)
        return Evaluation({"perplexity": math.exp(min(mean, 700.0)), "nll": mean},
                          {"perplexity": per_doc, "nll": per_doc})
