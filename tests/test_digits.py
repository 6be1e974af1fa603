"""The digits task (docs/design.md §8): data split, the vectorised evaluator, pre-trained
experts."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.evaluate import digits


@pytest.fixture(scope="module")
def data() -> digits.DigitsData:
    return digits.load_data()


def reference_logits(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    w1, b1, w2, b2 = (a.astype(np.float64) for a in digits.unflatten(theta))
    return np.maximum(x.astype(np.float64) @ w1 + b1, 0) @ w2 + b2


def test_split_is_the_papers(data):
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert data.x_train.min() == 0 and data.x_train.max() == 16  # raw pixels
    assert digits.N_PARAMS == 19_210


@pytest.mark.parametrize("kind", ["correct", "p_correct"])
def test_evaluator_scores_match_a_plain_forward_pass(data, kind):
    ev = digits.DigitsEvaluator(data, scores=kind)
    theta = digits.init_params(np.random.default_rng(0), sigma=0.05)
    objectives, scores = ev.evaluate(theta)
    out = reference_logits(theta, data.x_train)
    correct = out.argmax(1) == data.y_train
    assert np.array_equal(ev.predictions(theta), out.argmax(1))
    assert objectives["accuracy"] == pytest.approx(correct.mean())
    if kind == "correct":
        assert np.array_equal(scores, correct.astype(np.float32))
    else:
        p = np.exp(out - out.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        assert np.allclose(scores, p[np.arange(len(p)), data.y_train], atol=1e-5)
        assert ((scores > 0.5) <= correct).all()  # p > 1/2 on the true class means correct
    assert ev.heldout(theta)["accuracy"] == pytest.approx(
        np.mean(reference_logits(theta, data.x_test).argmax(1) == data.y_test))


def test_bad_genome_and_bad_score_kind_are_named(data):
    ev = digits.DigitsEvaluator(data)
    with pytest.raises(ValueError, match="genome: expected 19210"):
        ev.evaluate(np.zeros(100))
    with pytest.raises(ValueError, match="scores: expected"):
        digits.DigitsEvaluator(data, scores="logits")  # type: ignore[arg-type]


def test_experts_are_specialists(data):
    expert = digits.train_expert(data, range(0, 5), seed=1)
    pred = reference_logits(expert, data.x_test).argmax(1)
    low = data.y_test < 5
    assert np.mean(pred[low] == data.y_test[low]) > 0.6
    assert np.mean(pred[~low] == data.y_test[~low]) < 0.05
