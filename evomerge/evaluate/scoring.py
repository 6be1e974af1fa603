"""Log-likelihoods of continuations under a causal LM, batched: the forward passes behind the
perplexity and classification evaluators."""

from __future__ import annotations

from typing import Any


def continuation_logprobs(model: Any, pairs: list[tuple[list[int], list[int]]],
                          batch_size: int, pad_id: int = 0) -> tuple[list[float], list[int]]:
    """For each (context, continuation) token-id pair: Σ log p(continuation | context) and the
    number of continuation tokens. The context must hold at least one token. Pairs are sorted
    by length so that batches pad little; results come back in the input order."""
    import torch  # here: `report` and `export` import the evaluators and never score

    with torch.inference_mode():
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        sums = [0.0] * len(pairs)
        counts = [0] * len(pairs)
        device = next(model.parameters()).device
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            seqs = [pairs[i][0] + pairs[i][1] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s)
                mask[r, :len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            target = ids[:, 1:].to(device)
            tok = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).cpu()
            for r, i in enumerate(idx):
                ctx, cont = pairs[i]
                lo = len(ctx) - 1  # the logit at position p predicts token p + 1
                sums[i] = float(tok[r, lo:lo + len(cont)].sum())
                counts[i] = len(cont)
        return sums, counts


def windows(ids: list[int], max_length: int) -> list[tuple[list[int], list[int]]]:
    """A long document as (context, continuation) windows of at most `max_length` tokens that
    together score every token but the first exactly once."""
    out = []
    pos = 1
    while pos < len(ids):
        end = min(len(ids), pos + max_length - 1)
        out.append((ids[pos - 1:pos], ids[pos:end]))
        pos = end
    return out
