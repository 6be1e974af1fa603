"""Uncertainty of scores measured on a finite set of items: standard errors, and paired
comparisons of two models scored on the same items (docs/design.md §7.5).

A search picks its winner among many noisy candidates, so a winner's score on the items it was
picked on is biased upwards; comparing it with a baseline is honest only on other items, and
only as a paired difference (both models answer the same items, so most of the item-to-item
variance cancels). Objectives may fold several metrics (`min` of per-skill accuracies); the
bootstrap resamples items within each metric and recomputes the folded objective, so the
interval is the objective's, not a metric's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import comb, sqrt

import numpy as np

Fold = Callable[[Mapping[str, float]], float | None]


def standard_error(samples: np.ndarray) -> float:
    """Standard error of a mean of per-item scores (sqrt(p(1-p)/n) for 0/1 scores)."""
    s = np.asarray(samples, dtype=np.float64)
    if s.size < 2:
        return float("nan")
    return float(s.std(ddof=1) / sqrt(s.size))


@dataclass(frozen=True)
class PairedDifference:
    """`a - b` of one objective on the same items, with a 95% percentile interval."""

    difference: float
    low: float
    high: float
    items: int  # items per metric, summed over the metrics the objective reads
    method: str  # "paired bootstrap" or "McNemar (exact)"
    p_value: float | None = None  # McNemar's two-sided exact p (0/1 single-metric objectives)

    @property
    def significant(self) -> bool:
        """The 95% interval excludes zero."""
        return self.low > 0 or self.high < 0


def _check_pairs(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> list[str]:
    names = sorted(set(a) & set(b))
    if not names:
        raise ValueError("no metric has per-item scores for both models")
    for n in names:
        if np.asarray(a[n]).shape != np.asarray(b[n]).shape:
            raise ValueError(f"{n}: {np.asarray(a[n]).size} items against "
                             f"{np.asarray(b[n]).size}; a paired comparison needs the same items")
    return names


def paired_bootstrap(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], fold: Fold,
                     resamples: int = 4000, seed: int = 0) -> PairedDifference:
    """fold(means of a) - fold(means of b) and its 95% percentile interval, resampling the
    items of each metric with replacement (the same draw for both models)."""
    names = _check_pairs(a, b)
    xa = {n: np.asarray(a[n], dtype=np.float64) for n in names}
    xb = {n: np.asarray(b[n], dtype=np.float64) for n in names}

    def value(x: Mapping[str, np.ndarray]) -> float:
        v = fold({n: float(x[n].mean()) for n in names})
        if v is None:
            raise ValueError("the objective reads a metric without per-item scores")
        return float(v)

    point = value(xa) - value(xb)
    rng = np.random.default_rng(seed)
    draws = {n: rng.integers(0, xa[n].size, size=(resamples, xa[n].size), dtype=np.int32)
             for n in names}
    ma = {n: xa[n][draws[n]].mean(axis=1) for n in names}
    mb = {n: xb[n][draws[n]].mean(axis=1) for n in names}
    diffs = np.empty(resamples)
    for i in range(resamples):
        da = fold({n: float(ma[n][i]) for n in names})
        db = fold({n: float(mb[n][i]) for n in names})
        diffs[i] = float(da) - float(db)  # type: ignore[arg-type]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return PairedDifference(point, float(low), float(high), sum(xa[n].size for n in names),
                            "paired bootstrap")


def bootstrap_se(items: Mapping[str, np.ndarray], fold: Fold, resamples: int = 2000,
                 seed: int = 0) -> float:
    """Standard error of fold(means of items), by resampling each metric's items; for one
    metric this is the usual standard error of a mean."""
    names = sorted(items)
    x = {n: np.asarray(items[n], dtype=np.float64) for n in names}
    if len(names) == 1:
        return standard_error(x[names[0]])
    rng = np.random.default_rng(seed)
    means = {n: x[n][rng.integers(0, x[n].size, size=(resamples, x[n].size),
                                  dtype=np.int32)].mean(axis=1) for n in names}
    values = [fold({n: float(means[n][i]) for n in names}) for i in range(resamples)]
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1))


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for two models' 0/1 scores on the same items: only the
    items they disagree on count."""
    x, y = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    if x.shape != y.shape:
        raise ValueError("a paired comparison needs the same items")
    wins, losses = int(np.sum(x & ~y)), int(np.sum(~x & y))
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2 * tail))


def compare(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], fold: Fold,
            resamples: int = 4000, seed: int = 0) -> PairedDifference:
    """The paired bootstrap interval; for an objective of one 0/1 metric, McNemar's exact
    p-value besides."""
    diff = paired_bootstrap(a, b, fold, resamples, seed)
    names = _check_pairs(a, b)
    if len(names) == 1:
        sa, sb = np.asarray(a[names[0]]), np.asarray(b[names[0]])
        if np.all((sa == 0) | (sa == 1)) and np.all((sb == 0) | (sb == 1)):
            return PairedDifference(diff.difference, diff.low, diff.high, diff.items,
                                    diff.method, mcnemar(sa, sb))
    return diff


__all__ = ["PairedDifference", "bootstrap_se", "compare", "mcnemar", "paired_bootstrap",
           "standard_error"]
