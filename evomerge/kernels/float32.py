"""The float32 arithmetic behind the merge methods: pure tensor functions (docs/design.md §3).

What a method is (its parameters, defaults, mergekit name) is declared in the method registry,
evomerge.merge_methods, whose tensor functions call these; the named combinations below
(`ties`, `dare_ties`, ...) are the same arithmetic, kept as a direct API and as the references
tests compare the registry against.

Inputs are tensors of one shape in any float dtype (bf16 sources stay bf16 in memory); every
method computes in float32, chunk by chunk, and returns float32. Semantics follow mergekit
0.1.5 where it defines them (defaults for `normalize`, the zero-divisor rule, the sign election,
the top-k count k = max(1, int(d·n))), with two deliberate differences: top-k ties at the
threshold keep the lowest flat indices first (mergekit's argsort leaves them arbitrary), and
DARE rescales survivors by 1/d as the DARE paper does (mergekit matches L1 norms instead).

Why chunks: a TIES merge of K sources over a 25M-entry embedding would otherwise hold K
float32 task vectors plus masks at once (over a gigabyte). Exact top-k needs no sort and no
whole task vector: |τ| as int32 bit patterns orders like the floats, so two 16-bit histogram
passes over the chunks (radix select) find the exact threshold; the merge pass then recomputes
each chunk's τ, masks it against the threshold and combines. Memory is the inputs, the output
and a few chunk-sized temporaries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

CHUNK = 1 << 18  # entries per chunk: 1 MB of float32, so two workers' chunks stay in L3


def _abs_bits(x: torch.Tensor) -> torch.Tensor:
    """|x| as int32 bit patterns (non-negative floats order like their patterns)."""
    return x.reshape(-1).view(torch.int32) & 0x7FFFFFFF


def _last_at_least(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """Largest bin b with (entries in bins >= b) >= k, and how many are above b."""
    at_least = counts.flip(0).cumsum(0).flip(0)
    b = int(torch.searchsorted(-at_least, -k, right=True)) - 1
    return b, int(at_least[b] - counts[b])


@dataclass
class TopK:
    """Keeps the k entries of largest magnitude of a chunked tensor, exactly: the threshold
    comes from two histogram passes; ties at it go to the lowest indices."""

    k: int
    threshold: int = -1
    need_eq: int = 0
    eq_total: int = 0
    prepared: bool = False
    _used: int = field(default=0, repr=False)

    ranks: torch.Tensor | None = field(default=None, repr=False)
    _pos: int = field(default=0, repr=False)

    @classmethod
    def from_ranks(cls, k: int, ranks: torch.Tensor) -> TopK:
        """The same selection read off each entry's magnitude rank (`magnitude_ranks`, which
        a search computes once per source and keeps): entry i survives iff ranks[i] < k."""
        return cls(k, prepared=True, ranks=ranks)

    # Two histogram passes; the caller feeds chunks in index order to each `*_pass`.
    def active(self, n: int) -> bool:
        """Whether a threshold is needed at all over n entries (keep none or all: no)."""
        return 0 < self.k < n

    def start(self) -> None:
        """Begin the first pass (a histogram of the high 16 bits of |x|)."""
        self._hi = torch.zeros(1 << 15, dtype=torch.int64)

    def hi_pass(self, d: torch.Tensor) -> None:
        """Count one chunk into the high-bits histogram."""
        self._hi += torch.bincount(_abs_bits(d) >> 16, minlength=1 << 15)

    def between_passes(self) -> None:
        """Fix the high bits of the threshold; begin the low-bits histogram inside them."""
        self._b, above = _last_at_least(self._hi, self.k)
        self._need = self.k - above
        self._lo = torch.zeros((1 << 16) + 2, dtype=torch.int64)

    def lo_pass(self, d: torch.Tensor) -> None:
        """Count one chunk into the low-bits histogram."""
        rel = (_abs_bits(d) - (self._b << 16)).clamp_(-1, 1 << 16).add_(1)
        self._lo += torch.bincount(rel, minlength=(1 << 16) + 2)

    def finish(self) -> None:
        """Fix the exact threshold and how many entries equal to it survive."""
        lo = self._lo[1:-1]
        c, above_lo = _last_at_least(lo, self._need)
        self.threshold = (self._b << 16) | c
        self.need_eq = self._need - above_lo
        self.eq_total = int(lo[c])
        self._used = 0
        self.prepared = True

    def mask(self, d: torch.Tensor) -> torch.Tensor:
        """Mask for the next chunk (chunks must come in order)."""
        if self.k <= 0:
            return torch.zeros_like(d, dtype=torch.bool)
        if self.ranks is not None:
            r = self.ranks[self._pos:self._pos + d.numel()]
            self._pos += d.numel()
            return (r < self.k).reshape(d.shape)
        if self.threshold < 0:
            return torch.ones_like(d, dtype=torch.bool)
        bits = _abs_bits(d)
        if self.need_eq == self.eq_total:
            return (bits >= self.threshold).reshape(d.shape)
        m = bits > self.threshold
        left = self.need_eq - self._used
        if left > 0:
            eq = bits == self.threshold
            n_eq = int(eq.sum())
            if n_eq <= left:  # the whole run of ties in this chunk survives
                m |= eq
                self._used += n_eq
            else:  # the cut falls inside this chunk: lowest indices first
                m[torch.nonzero(eq).reshape(-1)[:left]] = True
                self._used += left
        return m.reshape(d.shape)


@dataclass
class KeepRule:
    """Which entries of a task vector survive: a top-k band (TIES, breadcrumbs) or a random
    draw (DARE), applied chunk by chunk in index order."""

    upper: TopK | None = None  # keep at most these (by magnitude)
    outliers: TopK | None = None  # ... minus these largest ones
    density: float = 1.0  # DARE keep probability
    generator: torch.Generator | None = None
    uniforms: torch.Tensor | None = None  # DARE's draws, cached: `dare_uniforms` of generator
    _pos: int = field(default=0, repr=False)

    def selections(self, n: int) -> list[TopK]:
        """The top-k selections whose thresholds still need the histogram passes."""
        return [t for t in (self.upper, self.outliers)
                if t is not None and t.active(n) and not t.prepared]

    def apply(self, d: torch.Tensor) -> torch.Tensor:
        """Zero (in place) the entries of the next chunk that do not survive."""
        if self.uniforms is not None:
            u = self.uniforms[self._pos:self._pos + d.numel()].reshape(d.shape)
            self._pos += d.numel()
            return d.mul_(u < self.density).div_(self.density)
        if self.generator is not None:
            keep = torch.rand(d.shape, generator=self.generator, device=d.device) < self.density
            return d.mul_(keep).div_(self.density)
        m = self.upper.mask(d) if self.upper is not None else None
        if self.outliers is not None:
            out = self.outliers.mask(d)
            m = ~out if m is None else m & ~out
        return d.mul_(m) if m is not None else d


def prepare_thresholds(selections: list[TopK], chunks: Callable[[], object]) -> None:
    """Run the two histogram passes for several selections at once. `chunks()` yields, per
    chunk in index order, one tensor per selection (the same tensor may serve several)."""
    if not selections:
        return
    for t in selections:
        t.start()
    for ds in chunks():
        for t, d in zip(selections, ds, strict=True):
            t.hi_pass(d)
    for t in selections:
        t.between_passes()
    for ds in chunks():
        for t, d in zip(selections, ds, strict=True):
            t.lo_pass(d)
    for t in selections:
        t.finish()


def topk_magnitude_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k entries of largest |x| (ties: lowest flat index first)."""
    rule = TopK(k)
    flat = x.detach().float().reshape(-1)
    if rule.active(flat.numel()):
        prepare_thresholds([rule], lambda: ([c] for c in _chunks(flat)))
    return torch.cat([rule.mask(c) for c in _chunks(flat)]).reshape(x.shape) \
        if flat.numel() else torch.zeros_like(x, dtype=torch.bool)


def _chunks(flat: torch.Tensor, size: int = CHUNK):
    for s in range(0, flat.numel(), size):
        yield flat[s:s + size]


def magnitude_ranks(delta: torch.Tensor) -> torch.Tensor:
    """Each entry's place (int32) in the order TopK keeps: largest |τ| first, equal
    magnitudes by lowest index. Any k's top-k mask is then `ranks < k`, bit-identical to the
    histogram passes' selection; a search computes this once per source and tensor."""
    bits = _abs_bits(delta.float().contiguous())
    order = torch.sort(bits, descending=True, stable=True).indices
    ranks = torch.empty(bits.numel(), dtype=torch.int32, device=bits.device)
    ranks[order] = torch.arange(bits.numel(), dtype=torch.int32, device=bits.device)
    return ranks


def dare_uniforms(n: int, generator: torch.Generator, device: torch.device | str = "cpu",
                  chunk: int = CHUNK) -> torch.Tensor:
    """The draws `KeepRule.apply` takes from `generator` over n entries, in the same chunks,
    so a cached copy reproduces DARE's mask bit for bit at any density."""
    return torch.cat([torch.rand((min(chunk, n - s),), generator=generator, device=device)
                      for s in range(0, n, chunk)]) if n else torch.empty(0, device=device)


def _topk(k: int, ranks: torch.Tensor | None) -> TopK:
    return TopK(k) if ranks is None else TopK.from_ranks(k, ranks)


def magnitude_rule(density: float, n: int, ranks: torch.Tensor | None = None
                   ) -> KeepRule | None:
    """TIES: keep the top-d fraction by magnitude (at least one entry when d > 0)."""
    if density >= 1:
        return None
    return KeepRule(upper=_topk(0 if density <= 0 or n == 0 else max(1, int(density * n)),
                                ranks))


def outlier_rule(density: float, gamma: float, n: int,
                 ranks: torch.Tensor | None = None) -> KeepRule | None:
    """Breadcrumbs: drop the largest gamma fraction, then the smallest, keeping int(d·n)."""
    if density >= 1:
        return None
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    return KeepRule(upper=_topk(n - n_bot, ranks),
                    outliers=_topk(n - n_bot - target, ranks))


def dare_rule(density: float, generator: torch.Generator,
              uniforms: torch.Tensor | None = None) -> KeepRule | None:
    """DARE: drop each entry with probability 1 - d, rescale survivors by 1/d."""
    if density >= 1:
        return None
    if density <= 0:
        return KeepRule(upper=TopK(0))
    return KeepRule(density=density, generator=generator, uniforms=uniforms)


def _apply_rule(delta: torch.Tensor, rule: KeepRule | None) -> torch.Tensor:
    if rule is None:
        return delta
    flat = delta.detach().float().reshape(-1).clone()
    sel = rule.selections(flat.numel())
    prepare_thresholds(sel, lambda: ([c] * len(sel) for c in _chunks(flat)))
    for c in _chunks(flat):
        rule.apply(c)  # in place on the chunk view
    return flat.reshape(delta.shape)


def magnitude_prune(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top-d fraction of entries by magnitude (at least one when d > 0)."""
    return _apply_rule(delta, magnitude_rule(density, delta.numel()))


def magnitude_outlier_prune(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs: drop the largest gamma fraction, then the smallest, keeping d·n entries."""
    return _apply_rule(delta, outlier_rule(density, gamma, delta.numel()))


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability 1 - d, rescale survivors by 1/d."""
    return _apply_rule(delta, dare_rule(density, generator))


def task_vector_merge(
    base: torch.Tensor,
    sources: Sequence[torch.Tensor],
    weights: Sequence[float],
    rules: Sequence[KeepRule | None] | None = None,
    sign_consensus: bool = False,
    lam: float = 1.0,
    normalize: bool = False,
    chunk: int = CHUNK,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The generalised task-arithmetic merge behind task_arithmetic, TIES, DARE, breadcrumbs.

    τ_k = θ_k − θ₀ (entries outside the keep rule zeroed), weighted by w_k; with sign consensus
    only entries agreeing with sign(Σ w_k τ_k) (a zero sum elects +) count, and the divisor is
    the sum of the weights of agreeing non-zero entries; a zero divisor becomes 1.
    """
    base_flat = base.reshape(-1)
    flats = [s.reshape(-1) for s in sources]
    n = base_flat.numel()
    rules = list(rules) if rules else [None] * len(flats)

    # every selection with the source it reads; each chunk's τ_k is computed once per pass
    owners = [(k, t) for k, rule in enumerate(rules) if rule is not None
              for t in rule.selections(n)]

    def deltas():
        for s in range(0, n, chunk):
            b = base_flat[s:s + chunk].float()
            per_source = {k: flats[k][s:s + chunk].float() - b for k in {k for k, _ in owners}}
            yield [per_source[k] for k, _ in owners]

    prepare_thresholds([t for _, t in owners], deltas)
    out = torch.empty(n, dtype=out_dtype, device=base.device)
    total_w = float(sum(weights))
    for s in range(0, n, chunk):
        b = base_flat[s:s + chunk].float()
        weighted = []
        for k, w in enumerate(weights):
            # a new float32 tensor (the source is upcast exactly): inputs stay untouched
            d = torch.sub(flats[k][s:s + chunk], b)
            if rules[k] is not None:
                d = rules[k].apply(d)
            weighted.append(d.mul_(w))
        mixed = weighted[0].clone()
        for wd in weighted[1:]:
            mixed += wd
        if sign_consensus:
            # elected sign e = ±1 (a zero sum elects +); w·τ agrees with it iff w·τ·e > 0, so
            # relu(w·τ·e) is |w·τ| where it agrees and 0 elsewhere: all cheap elementwise ops.
            sign = torch.sign(mixed).add_(0.5).sign_()
            divisor = torch.zeros_like(b) if normalize else None
            for i, (wd, w) in enumerate(zip(weighted, weights, strict=True)):
                agreeing = wd.mul_(sign).relu_()
                if i == 0:
                    mixed.copy_(agreeing)
                else:
                    mixed += agreeing
                if divisor is not None:
                    divisor.add_(agreeing.sign_(), alpha=w)
            mixed *= sign
            if divisor is not None:
                mixed /= divisor.add_(divisor == 0)  # a zero divisor becomes 1
        elif normalize:
            mixed /= total_w if abs(total_w) >= 1e-8 else 1.0
        if lam != 1:
            mixed *= lam
        out[s:s + chunk] = mixed.add_(b)  # rounded once, straight into the output dtype
    return out.reshape(base.shape)


def linear(sources: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True,
           chunk: int = CHUNK, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Σ w_k θ_k, divided by Σ w_k when normalising."""
    div = float(sum(weights))
    if normalize and div == 0:
        raise ValueError("linear: weights sum to zero, cannot normalise")
    flats = [src.reshape(-1) for src in sources]
    n = flats[0].numel()
    out = torch.empty(n, dtype=out_dtype, device=flats[0].device)
    for s in range(0, n, chunk):
        acc = flats[0][s:s + chunk].float() * weights[0]
        for f, w in zip(flats[1:], weights[1:], strict=True):
            acc.add_(f[s:s + chunk].float(), alpha=w)
        if normalize:
            acc /= div
        out[s:s + chunk] = acc
    return out.reshape(sources[0].shape)


_Tensors = Sequence[torch.Tensor]
_Cached = Sequence[torch.Tensor | None] | None


def task_arithmetic(base: torch.Tensor, sources: _Tensors, weights: Sequence[float],
                    lam: float = 1.0, normalize: bool = False, **kw: Any) -> torch.Tensor:
    """θ₀ + λ Σ w_k τ_k: no trim, no sign election."""
    return task_vector_merge(base, sources, weights, None, False, lam, normalize, **kw)


# `ranks` / `uniforms`: optional per-source caches (None where absent) that give the
# same selection without the histogram passes or the random draws.
def ties(base: torch.Tensor, sources: _Tensors, weights: Sequence[float],
         densities: Sequence[float], lam: float = 1.0, normalize: bool = True,
         ranks: _Cached = None, **kw: Any) -> torch.Tensor:
    """TIES: top-d trim by magnitude, then sign election."""
    cached = ranks or [None] * len(densities)
    rules = [magnitude_rule(d, base.numel(), c) for d, c in zip(densities, cached, strict=True)]
    return task_vector_merge(base, sources, weights, rules, True, lam, normalize, **kw)


def _dare_rules(densities: Sequence[float], generators: Sequence[torch.Generator],
                uniforms: _Cached) -> list[KeepRule | None]:
    cached = uniforms or [None] * len(densities)
    return [dare_rule(d, g, u) for d, g, u in zip(densities, generators, cached, strict=True)]


def dare_linear(base: torch.Tensor, sources: _Tensors, weights: Sequence[float],
                densities: Sequence[float], generators: Sequence[torch.Generator],
                lam: float = 1.0, normalize: bool = False, uniforms: _Cached = None,
                **kw: Any) -> torch.Tensor:
    """DARE's random drops (survivors rescaled by 1/d), no sign election."""
    rules = _dare_rules(densities, generators, uniforms)
    return task_vector_merge(base, sources, weights, rules, False, lam, normalize, **kw)


def dare_ties(base: torch.Tensor, sources: _Tensors, weights: Sequence[float],
              densities: Sequence[float], generators: Sequence[torch.Generator],
              lam: float = 1.0, normalize: bool = False, uniforms: _Cached = None,
              **kw: Any) -> torch.Tensor:
    """DARE's random drops, then sign election."""
    rules = _dare_rules(densities, generators, uniforms)
    return task_vector_merge(base, sources, weights, rules, True, lam, normalize, **kw)


def breadcrumbs(base: torch.Tensor, sources: _Tensors, weights: Sequence[float],
                densities: Sequence[float], gammas: Sequence[float], lam: float = 1.0,
                normalize: bool = False, sign_consensus: bool = False, ranks: _Cached = None,
                **kw: Any) -> torch.Tensor:
    """Breadcrumbs: drop the largest gamma and the smallest entries; TIES' election with
    `sign_consensus` (breadcrumbs_ties)."""
    cached = ranks or [None] * len(densities)
    rules = [outlier_rule(d, g, base.numel(), c)
             for d, g, c in zip(densities, gammas, cached, strict=True)]
    return task_vector_merge(base, sources, weights, rules, sign_consensus, lam, normalize,
                             **kw)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float = 0.9995,
          eps: float = 1e-8, chunk: int = CHUNK, out_dtype: torch.dtype = torch.float32
          ) -> torch.Tensor:
    """Spherical interpolation of whole tensors (t=0 → a); linear when (anti)parallel."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    saa = sbb = sab = 0.0
    for s in range(0, fa.numel(), chunk):
        x, y = fa[s:s + chunk].double(), fb[s:s + chunk].double()
        saa += float(x @ x)
        sbb += float(y @ y)
        sab += float(x @ y)
    na = saa**0.5 if saa**0.5 > eps else 1.0
    nb = sbb**0.5 if sbb**0.5 > eps else 1.0
    dot = max(-1.0, min(1.0, sab / (na * nb)))
    if abs(dot) > dot_threshold:
        ca, cb = 1 - t, t
    else:
        theta = torch.acos(torch.tensor(dot, dtype=torch.float64))
        sin_theta = torch.sin(theta)
        ca = float(torch.sin((1 - t) * theta) / sin_theta)
        cb = float(torch.sin(t * theta) / sin_theta)
    return linear([a, b], [ca, cb], normalize=False, chunk=chunk, out_dtype=out_dtype)
