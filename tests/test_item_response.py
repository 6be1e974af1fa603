"""Estimating a candidate's score on a split from a few items (evomerge.item_response)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from evomerge.item_response import ItemResponseModel, anchor_estimate, anchor_points


def two_parameter_data(candidates: int, items: int, seed: int = 0):
    """0/1 scores drawn from a known item response model."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(candidates)
    alpha, beta = rng.normal(0.5, 1.5, items), rng.uniform(0.5, 2.5, items)
    p = 1 / (1 + np.exp(-(alpha + np.outer(theta, beta))))
    return (rng.random(p.shape) < p).astype(float), theta, p


def test_the_fitted_model_recovers_the_abilities_and_estimates_from_a_tenth_of_the_items():
    y, theta, p = two_parameter_data(160, 400)
    seen, new, new_p = y[:120], y[120:], p[120:]
    model = ItemResponseModel.fit(seen)
    assert np.corrcoef(model.theta, theta[:120])[0, 1] > 0.95
    anchors, weights = anchor_points(seen, 40)
    truth = new_p.mean(axis=1)  # the expected score over the items
    pirt = np.array([model.estimate(anchors, row[anchors]) for row in new])
    rng = np.random.default_rng(1)
    sampled = np.array([row[rng.choice(400, 40, replace=False)].mean() for row in new])
    # a uniform tenth of the items errs by ~0.06; the model, from as many, by ~0.04
    assert np.abs(pirt - truth).mean() < 0.045
    assert np.abs(pirt - truth).mean() < 0.75 * np.abs(sampled - truth).mean()
    anchored = np.array([anchor_estimate(weights, row[anchors]) for row in new])
    assert np.abs(anchored - truth).mean() < np.abs(sampled - truth).mean()


@settings(max_examples=25, deadline=None)
@given(groups=st.integers(2, 6), k_extra=st.integers(0, 4), seed=st.integers(0, 10_000))
def test_anchor_points_are_k_distinct_items_whose_weights_are_their_shares(groups, k_extra,
                                                                          seed):
    """Items in groups of identical columns (what a few candidates leave): k anchors, no item
    twice, weights summing to 1; with one anchor a group, a candidate scoring alike within
    each group is estimated exactly."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 30, groups)
    columns = rng.integers(0, 2, (5, groups))
    while len({tuple(c) for c in columns.T}) < groups:  # distinct group columns
        columns = rng.integers(0, 2, (5, groups))
    label = np.repeat(np.arange(groups), sizes)
    seen = columns[:, label].astype(float)
    k = min(groups + k_extra, len(label))
    anchors, weights = anchor_points(seen, k, seed)
    assert len(anchors) == k == len(set(anchors.tolist()))
    assert np.isclose(weights.sum(), 1.0) and (weights > 0).all()
    if k == groups:
        new = rng.integers(0, 2, groups).astype(float)[label]
        assert np.isclose(anchor_estimate(weights, new[anchors]), new.mean())


def test_items_every_candidate_got_right_keep_finite_parameters():
    y = np.ones((6, 50))
    y[:, :10] = np.eye(6, 10)[:, :10]  # a few informative items, the rest all right
    model = ItemResponseModel.fit(y)
    assert np.isfinite(model.alpha).all() and np.isfinite(model.beta).all()
    est = model.estimate(np.arange(5), np.ones(5))
    assert 0.0 <= est <= 1.0
