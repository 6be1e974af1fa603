"""mergekit's arithmetic at 16-bit precision, for recipes with `compute_dtype`.

Given `dtype: float16` (or bfloat16), mergekit 0.1.5 rounds every input to that dtype before
merging: linear and SLERP then compute in float32 from the rounded inputs, and the
task-arithmetic family (task_arithmetic, TIES, breadcrumbs) runs one whole-tensor operation at
a time, each result rounded to the 16-bit dtype (task vectors, weighted task vectors, the
weights themselves, the sums, the divisor, the division, the final add). Our float32 merge is
more accurate, but it is not what mergekit writes: on mergekit's own float16 examples over
float32 sources, 6–21% of the entries differ. This module repeats mergekit's sequence of
operations, trims included (a magnitude sort, as mergekit does), so the same config gives the
same weights.

It holds whole tensors and sorts, so it is slower and larger than the float32 path: it exists
to match mergekit, not as the default. Which of these functions a method runs is the method's
own `merge_16bit` (evomerge.merge_methods); merge_tensor sends a recipe with a 16-bit
`compute_dtype` there, its inputs rounded to that dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_SLERP_CHUNK = 1024 * 1024  # mergekit's slerp sums its norms and dot product in such chunks


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool
           ) -> torch.Tensor:
    """Σ w_k θ_k (/ Σ w_k) accumulated in float32 with float32 weights, then rounded back."""
    first = tensors[0]
    w = torch.tensor([list(weights)], dtype=torch.float32, device=first.device)  # [1, K]
    shape = (1,) + (1,) * first.dim()
    result = torch.zeros((1, *first.shape), dtype=torch.float32, device=first.device)
    for t, c in zip(tensors, w.unbind(1), strict=True):
        result.addcmul_(t.unsqueeze(0), c.reshape(shape))
    if normalize:
        result.div_(w.sum(dim=1).reshape(shape))
    return result[0].to(first.dtype)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation in float32 from the (rounded) inputs, norms and dot product
    summed over the same chunks as mergekit's; linear when (anti)parallel."""
    f32 = torch.float32
    a, b = v0.reshape(1, -1), v1.reshape(1, -1)
    tt = torch.tensor([t], dtype=f32, device=a.device).reshape(-1, 1)
    if not a.shape[1]:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    spans = [slice(s, s + _SLERP_CHUNK) for s in range(0, a.shape[1], _SLERP_CHUNK)]

    def norm(x: torch.Tensor) -> torch.Tensor:
        parts = [torch.linalg.vector_norm(x[:, s].to(f32), dim=1, keepdim=True) for s in spans]
        n = torch.linalg.vector_norm(torch.stack(parts), dim=0)
        return torch.where(n > eps, n, 1)

    na, nb = norm(a), norm(b)
    dot = torch.stack([((a[:, s].to(f32) / na) * (b[:, s].to(f32) / nb)).sum(dim=1, keepdim=True)
                       for s in spans]).sum(dim=0).clamp(-1, 1)
    straight = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(straight, 0, dot))
    sin_theta = torch.sin(theta)
    ca = torch.where(straight, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    cb = torch.where(straight, tt, torch.sin(tt * theta) / sin_theta)
    result = torch.empty_like(a)
    for s in spans:
        result[:, s] = ca * a[:, s].to(f32) + cb * b[:, s].to(f32)
    return result.reshape(v0.shape)


def trim_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES' trim: keep the k = max(1, int(d·n)) largest |τ| (mergekit's sort order)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    order = torch.argsort(_magnitudes(delta), descending=True)
    return delta * _mask(delta, order[:k])


def trim_outliers(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs' trim: drop the largest gamma fraction and the smallest, keeping int(d·n)."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep = int(density * n)
    bottom = max(0, n - keep - int(gamma * n))
    order = torch.sort(_magnitudes(delta), descending=False).indices
    return delta * _mask(delta, order[bottom:bottom + keep])


def _magnitudes(delta: torch.Tensor) -> torch.Tensor:
    w = delta.abs().reshape(-1)
    return w.float() if w.device.type == "cpu" else w  # mergekit sorts float32 on CPU only


def _mask(delta: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[keep] = 1
    return mask.reshape(delta.shape)


def task_arithmetic_family(base: torch.Tensor, sources: Sequence[torch.Tensor],
                           weights: Sequence[float], trims: Sequence, consensus: bool,
                           lam: float, normalize: bool) -> torch.Tensor:
    """θ₀ + λ·(Σ w_k τ̂_k, over sign-agreeing entries with consensus, / the divisor), every
    operation on whole tensors in the inputs' dtype."""
    if not sources:
        return base
    deltas = base.new_empty((len(sources), *base.shape))
    for i, (src, trim) in enumerate(zip(sources, trims, strict=True)):
        d = src - base
        deltas[i] = trim(d) if trim is not None else d
    w = torch.tensor(list(weights), dtype=deltas.dtype, device=deltas.device)
    while deltas.dim() > w.dim():
        w.unsqueeze_(-1)
    deltas.mul_(w)
    if consensus:
        elected = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
        agree = deltas.sign() == elected
        mixed = (deltas * agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return (base + mixed).to(base.dtype)
