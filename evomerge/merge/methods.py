"""Merge methods as pure tensor functions (DESIGN §3).

Inputs are float32 tensors of one shape; outputs are float32. Semantics follow mergekit 0.1.5
where it defines them (defaults for `normalize`, the zero-divisor rule, the sign election, the
top-k count k = max(1, int(d·n))), with two deliberate differences: top-k ties at the threshold
keep the lowest flat indices first (mergekit's argsort leaves them arbitrary), and DARE rescales
survivors by 1/d as the DARE paper does (mergekit matches L1 norms instead).

Exact top-k needs no sort: |x| as int32 bit patterns orders like the floats, so two 16-bit
histogram passes (radix select) find the exact threshold in O(n).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def topk_magnitude_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k entries of largest |x| (ties: lowest flat index first)."""
    n = x.numel()
    if k >= n:
        return torch.ones_like(x, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    # |x| as int32 bit patterns: non-negative floats order like their bit patterns.
    bits = x.detach().float().reshape(-1).view(torch.int32) & 0x7FFFFFFF
    hi_counts = torch.bincount(bits >> 16, minlength=1 << 15)
    at_least = hi_counts.flip(0).cumsum(0).flip(0)  # entries whose high half is >= b
    b = int(torch.searchsorted(-at_least, -k, right=True)) - 1  # last b with at_least >= k
    need = k - int(at_least[b] - hi_counts[b])
    # low halves inside bucket b; everything else lands in the two overflow bins
    lo = (bits - (b << 16)).clamp_(-1, 1 << 16).add_(1)
    lo_counts = torch.bincount(lo, minlength=(1 << 16) + 2)[1:-1]
    at_least_lo = lo_counts.flip(0).cumsum(0).flip(0)
    c = int(torch.searchsorted(-at_least_lo, -need, right=True)) - 1
    need_eq = need - int(at_least_lo[c] - lo_counts[c])
    threshold = (b << 16) | c
    if need_eq == int(lo_counts[c]):
        mask = bits >= threshold
    else:
        mask = bits > threshold
        eq_idx = torch.nonzero(bits == threshold).reshape(-1)[:need_eq]
        mask[eq_idx] = True
    return mask.reshape(x.shape)


def magnitude_prune(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top-d fraction of entries by magnitude (at least one when d > 0)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    return delta * topk_magnitude_mask(delta, k)


def magnitude_outlier_prune(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs: drop the largest gamma fraction, then the smallest, keeping d·n entries."""
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    upper = topk_magnitude_mask(delta, n - n_bot)
    outliers = topk_magnitude_mask(delta, n - n_bot - target)
    return delta * (upper & ~outliers)


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability 1 - d, rescale survivors by 1/d."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    keep = torch.rand(delta.shape, generator=generator, device=delta.device) < density
    return delta * keep / density


def task_vector_merge(
    base: torch.Tensor,
    sources: Sequence[torch.Tensor],
    weights: Sequence[float],
    sparsify: Sequence[Callable[[torch.Tensor], torch.Tensor] | None] | None = None,
    sign_consensus: bool = False,
    lam: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """The generalised task-arithmetic merge behind task_arithmetic, TIES, DARE, breadcrumbs.

    τ_k = θ_k − θ₀ (optionally sparsified), weighted by w_k; with sign consensus only entries
    agreeing with sign(Σ w_k τ_k) (ties → +) count, and the divisor is the sum of the weights of
    agreeing non-zero entries; a zero divisor becomes 1.
    """
    weighted = []
    for i, (src, w) in enumerate(zip(sources, weights, strict=True)):
        delta = src - base
        fn = sparsify[i] if sparsify else None
        if fn is not None:
            delta = fn(delta)
        weighted.append(delta.mul_(w))  # delta is always a fresh tensor here
    mixed = weighted[0].clone()
    for wd in weighted[1:]:
        mixed += wd
    if sign_consensus:
        # elected sign s = ±1 (a zero sum elects +); w·τ agrees with it iff w·τ·s > 0, so
        # relu(w·τ·s) is |w·τ| where it agrees and 0 elsewhere: all cheap elementwise ops.
        sign = torch.sign(mixed).add_(0.5).sign_()
        mixed.zero_()
        divisor = torch.zeros_like(base) if normalize else None
        for wd, w in zip(weighted, weights, strict=True):
            agreeing = wd.mul_(sign).relu_()
            mixed += agreeing
            if divisor is not None:
                divisor.add_(agreeing.sign_(), alpha=w)
        mixed *= sign
        if divisor is not None:
            mixed /= divisor.add_(divisor == 0)  # a zero divisor becomes 1
    elif normalize:
        div = float(sum(weights))
        mixed /= div if abs(div) >= 1e-8 else 1.0
    if lam != 1:
        mixed *= lam
    return base + mixed


def linear(sources: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True
           ) -> torch.Tensor:
    """Σ w_k θ_k, divided by Σ w_k when normalising."""
    out = torch.zeros_like(sources[0])
    for src, w in zip(sources, weights, strict=True):
        out.add_(src, alpha=w)
    if normalize:
        div = float(sum(weights))
        if div == 0:
            raise ValueError("linear: weights sum to zero, cannot normalise")
        out /= div
    return out


def task_arithmetic(base, sources, weights, lam=1.0, normalize=False) -> torch.Tensor:
    return task_vector_merge(base, sources, weights, None, False, lam, normalize)


def ties(base, sources, weights, densities, lam=1.0, normalize=True) -> torch.Tensor:
    prune = [_bind(magnitude_prune, d) for d in densities]
    return task_vector_merge(base, sources, weights, prune, True, lam, normalize)


def dare_linear(base, sources, weights, densities, generators, lam=1.0, normalize=False
                ) -> torch.Tensor:
    drop = [_bind_dare(d, g) for d, g in zip(densities, generators, strict=True)]
    return task_vector_merge(base, sources, weights, drop, False, lam, normalize)


def dare_ties(base, sources, weights, densities, generators, lam=1.0, normalize=False
              ) -> torch.Tensor:
    drop = [_bind_dare(d, g) for d, g in zip(densities, generators, strict=True)]
    return task_vector_merge(base, sources, weights, drop, True, lam, normalize)


def breadcrumbs(base, sources, weights, densities, gammas, lam=1.0, normalize=False,
                sign_consensus=False) -> torch.Tensor:
    prune = [
        (lambda x, d=d, g=g: magnitude_outlier_prune(x, d, g))
        for d, g in zip(densities, gammas, strict=True)
    ]
    return task_vector_merge(base, sources, weights, prune, sign_consensus, lam, normalize)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of whole tensors (t=0 → a); linear when (anti)parallel."""
    na = torch.linalg.vector_norm(a)
    nb = torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = float(((a / na) * (b / nb)).sum().clamp(-1, 1))
    if abs(dot) > dot_threshold:
        return (1 - t) * a + t * b
    theta = torch.acos(torch.tensor(dot, dtype=torch.float64))
    sin_theta = torch.sin(theta)
    ca = float(torch.sin((1 - t) * theta) / sin_theta)
    cb = float(torch.sin(t * theta) / sin_theta)
    return ca * a + cb * b


def _bind(fn: Callable[[torch.Tensor, float], torch.Tensor], d: float):
    return lambda x: fn(x, d)


def _bind_dare(d: float, g: torch.Generator):
    return lambda x: dare_drop(x, d, g)
