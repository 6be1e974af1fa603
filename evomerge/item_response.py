"""A candidate's score on a whole split estimated from a few of its items (issue 24, part 2),
learned from the per-item scores of the candidates a run has already scored in full.

A search logs every full evaluation's per-item scores (`trials.jsonl`, `scores`), so by its
tenth trial it holds a candidates × items matrix of the kind tinyBenchmarks (Polo et al.,
2024) fits once per benchmark from hundreds of public models. Two estimators are built from
that matrix, both per part (one evaluator metric's items, whose mean is the objective):

- **Anchor points**: the items are clustered by how the candidates scored on them (k-means
  on the item columns); one item per cluster, the one nearest its centre, stands for the
  cluster, weighted by the cluster's size. The estimate is the weighted mean of a new
  candidate's scores on those anchors.
- **p-IRT**: a two-parameter item response model, logit P(item i right for candidate j) =
  alpha_i + beta_i * theta_j, fitted to the matrix by alternating Newton steps with Gaussian
  priors. A new candidate's ability theta is fitted from its anchor scores alone; its
  estimate is its observed anchor scores plus the model's probabilities on every other item,
  averaged over the part.

Scores in [0, 1] that are not 0/1 (probabilities) are used as soft labels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# Gaussian priors of the item response model: they keep items that every candidate so far
# got right (or wrong) at finite parameters, and the abilities on one scale
PRIOR_SD = {"theta": 1.0, "alpha": 3.0, "beta": 2.0}
FIT_ROUNDS = 30


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def anchor_points(scores: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(k anchor item indices, their weights summing to 1): k-means on the item columns of a
    candidates × items matrix, the items nearest each centre standing for their cluster.
    Few candidates leave many items with the same column (every one right, say), and k-means
    then finds fewer than k distinct clusters: the spare anchors go to the largest clusters,
    which share their weight among their anchors."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    items = np.asarray(scores, dtype=np.float64).T  # one row per item
    k = min(k, len(items))
    with warnings.catch_warnings():  # fewer distinct columns than k: handled below
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(items)
    ranked: list[np.ndarray] = []  # per non-empty cluster: members, nearest the centre first
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if len(members):
            gap = ((items[members] - km.cluster_centers_[c]) ** 2).sum(axis=1)
            ranked.append(members[np.argsort(gap, kind="stable")])
    taken = [1] * len(ranked)
    while sum(taken) < k:  # the cluster with the most items per anchor takes one more
        c = max((i for i in range(len(ranked)) if taken[i] < len(ranked[i])),
                key=lambda i: len(ranked[i]) / taken[i])
        taken[c] += 1
    anchors = np.concatenate([r[:t] for r, t in zip(ranked, taken, strict=True)])
    weights = np.concatenate([np.full(t, len(r) / t) for r, t in zip(ranked, taken,
                                                                      strict=True)])
    order = np.argsort(anchors)
    return anchors[order], weights[order] / weights.sum()


@dataclass
class ItemResponseModel:
    """A fitted two-parameter model of one part's items: logit = alpha + beta * theta."""

    alpha: np.ndarray  # per item
    beta: np.ndarray  # per item
    theta: np.ndarray  # per fitted candidate

    @classmethod
    def fit(cls, scores: np.ndarray, rounds: int = FIT_ROUNDS) -> ItemResponseModel:
        """Joint maximum a posteriori fit to a candidates × items matrix of scores in [0, 1]:
        alternating Newton steps, items (two parameters each) then candidates (one each)."""
        y = np.asarray(scores, dtype=np.float64)
        m, _ = y.shape
        share = np.clip(y.mean(axis=1), 0.02, 0.98)
        theta = np.log(share / (1 - share))
        theta = (theta - theta.mean()) / (theta.std() + 1e-9) if m > 1 else theta * 0
        alpha = np.zeros(y.shape[1])
        beta = np.ones(y.shape[1])
        pa, pb, pt = (1 / PRIOR_SD[k] ** 2 for k in ("alpha", "beta", "theta"))
        for _ in range(rounds):
            # items: a 2x2 Newton step each, on (1, theta) with priors alpha ~ N(0, .),
            # beta ~ N(1, .)
            p = _sigmoid(alpha + np.outer(theta, beta))
            r, w = y - p, p * (1 - p)
            g0 = r.sum(axis=0) - pa * alpha
            g1 = theta @ r - pb * (beta - 1)
            h00 = w.sum(axis=0) + pa
            h01 = theta @ w
            h11 = (theta ** 2) @ w + pb
            det = h00 * h11 - h01 ** 2
            alpha = alpha + (h11 * g0 - h01 * g1) / det
            beta = beta + (h00 * g1 - h01 * g0) / det
            # candidates: a Newton step each on theta ~ N(0, .)
            theta = theta + _theta_step(y, alpha, beta, theta, pt)
        return cls(alpha, beta, theta)

    def ability(self, items: np.ndarray, observed: np.ndarray, steps: int = 20) -> float:
        """A new candidate's theta from its scores on `items` alone (maximum a posteriori)."""
        y = np.asarray(observed, dtype=np.float64)[None, :]
        a, b = self.alpha[items], self.beta[items]
        theta = np.zeros(1)
        for _ in range(steps):
            theta = theta + _theta_step(y, a, b, theta, 1 / PRIOR_SD["theta"] ** 2)
        return float(theta[0])

    def estimate(self, items: np.ndarray, observed: np.ndarray) -> float:
        """p-IRT: the observed scores on `items` plus the model's probabilities on every
        other item, averaged over the part."""
        p = _sigmoid(self.alpha + self.beta * self.ability(items, observed))
        p[items] = observed
        return float(p.mean())


def _theta_step(y: np.ndarray, alpha: np.ndarray, beta: np.ndarray, theta: np.ndarray,
                precision: float) -> np.ndarray:
    p = _sigmoid(alpha + np.outer(theta, beta))
    grad = (y - p) @ beta - precision * theta
    hess = (p * (1 - p)) @ (beta ** 2) + precision
    return np.clip(grad / hess, -2.0, 2.0)


def anchor_estimate(weights: np.ndarray, observed: np.ndarray) -> float:
    """The anchor points' estimate: the cluster-weighted mean of the anchors' scores."""
    return float(np.dot(weights, observed))


__all__ = ["ItemResponseModel", "anchor_estimate", "anchor_points"]
