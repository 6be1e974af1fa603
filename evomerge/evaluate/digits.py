"""The M2N2 paper's "MNIST" task on sklearn's bundled digits (docs/design.md §8),
vectorised in numpy.

First 80% of `load_digits` (1437 samples, no shuffle) is the search split, the last 20% (360)
the held-out split; raw pixels 0–16; an MLP 64→256→10 (19,210 parameters) whose flat parameter
vector is the genome. Per-sample scores are 0/1 correctness (the paper) or the probability of
the true class (continuous scores); M2N2's competition needs one or the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from evomerge.evaluate.base import leading

N_IN, N_HIDDEN, N_OUT = 64, 256, 10
N_PARAMS = N_IN * N_HIDDEN + N_HIDDEN + N_HIDDEN * N_OUT + N_OUT  # 19,210


@dataclass(frozen=True)
class DigitsData:
    """The digits images and labels, cut into the search (train) and held-out (test) splits."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data() -> DigitsData:
    """sklearn's digits, the first 80% as the search split and the rest held out (no shuffle)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    n_train = int(0.8 * len(x))  # 1437
    return DigitsData(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def unflatten(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The MLP's W1, b1, W2, b2 as views of a flat genome (for training by backprop)."""
    if theta.shape != (N_PARAMS,):
        raise ValueError(f"genome: expected {N_PARAMS} parameters, got shape {theta.shape}")
    i = 0
    w1 = theta[i:i + N_IN * N_HIDDEN].reshape(N_IN, N_HIDDEN)
    i += N_IN * N_HIDDEN
    b1 = theta[i:i + N_HIDDEN]
    i += N_HIDDEN
    w2 = theta[i:i + N_HIDDEN * N_OUT].reshape(N_HIDDEN, N_OUT)
    i += N_HIDDEN * N_OUT
    return w1, b1, w2, theta[i:]


def with_bias_column(x: np.ndarray) -> np.ndarray:
    """[x, 1]: W1 and b1 lie contiguously in the genome, so x·W1 + b1 is one matmul."""
    return np.hstack([x, np.ones((len(x), 1), dtype=np.float32)])


def logits(theta: np.ndarray, x_with_bias: np.ndarray) -> np.ndarray:
    """The MLP's class scores for inputs that carry the bias column (see with_bias_column)."""
    theta = np.asarray(theta, dtype=np.float32)
    if theta.shape != (N_PARAMS,):
        raise ValueError(f"genome: expected {N_PARAMS} parameters, got shape {theta.shape}")
    split = (N_IN + 1) * N_HIDDEN
    h = x_with_bias @ theta[:split].reshape(N_IN + 1, N_HIDDEN)
    np.maximum(h, 0, out=h)
    w2b = theta[split:].reshape(N_HIDDEN + 1, N_OUT)
    out = h @ w2b[:N_HIDDEN]
    out += w2b[N_HIDDEN]
    return out


def predict(theta: np.ndarray, x_with_bias: np.ndarray) -> np.ndarray:
    """The MLP's predicted class per input (inputs carry the bias column)."""
    return np.argmax(logits(theta, x_with_bias), axis=1)


def p_correct(out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Softmax probability of the true class, per sample: a score in [0, 1] that keeps
    rewarding a correct answer as its margin grows."""
    z = out - out.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return z[np.arange(len(y)), y] / z.sum(axis=1)


ScoreKind = Literal["correct", "p_correct"]


class DigitsEvaluator:
    """Scores a parameter vector: per-sample scores on the search split, accuracy on both.

    Per-sample scores are 0/1 correctness (the paper's setting) or, with
    `scores="p_correct"`, the probability given to the true class (continuous scores for
    M2N2's c_j rule). The objective is accuracy either way.
    """

    objectives = (("accuracy", "maximize"),)

    def __init__(self, data: DigitsData | None = None, scores: ScoreKind = "correct"):
        if scores not in ("correct", "p_correct"):
            raise ValueError(f"scores: expected 'correct' or 'p_correct', got {scores!r}")
        self.data = data or load_data()
        self.score_kind = scores
        self._x_train = with_bias_column(self.data.x_train)
        self._x_test = with_bias_column(self.data.x_test)

    @property
    def n_samples(self) -> int:
        """Size of the search split, which is how many per-sample scores a genome gets."""
        return len(self.data.y_train)

    def predictions(self, theta: np.ndarray) -> np.ndarray:
        """Predicted class of every search-split sample (to diagnose a run, e.g. a class that
        no member ever predicts)."""
        return predict(theta, self._x_train)

    def heldout_accuracy(self, theta: np.ndarray) -> float:
        """Accuracy on the held-out split, which the search never sees."""
        return float(np.mean(predict(theta, self._x_test) == self.data.y_test))

    def evaluate(self, theta: np.ndarray, fraction: float = 1.0
                 ) -> tuple[dict[str, float], np.ndarray]:
        """Accuracy on the search split's leading share, with per-sample scores of `scores` kind."""
        k = leading(len(self.data.y_train), fraction)
        out = logits(theta, self._x_train[:k])
        y = self.data.y_train[:k]
        correct = (np.argmax(out, axis=1) == y).astype(np.float32)
        accuracy = float(correct.mean())
        if self.score_kind == "correct":
            return {"accuracy": accuracy}, correct
        return {"accuracy": accuracy}, p_correct(out, y).astype(np.float32)

    def heldout(self, theta: np.ndarray) -> dict[str, float]:
        """Held-out accuracy as a metrics dict, for re-scoring the front."""
        return {"accuracy": self.heldout_accuracy(theta)}


def init_params(rng: np.random.Generator, sigma: float = 0.01) -> np.ndarray:
    """The paper's seeds: every parameter ~ N(0, sigma²)."""
    return (rng.standard_normal(N_PARAMS) * sigma).astype(np.float32)


def train_expert(data: DigitsData, classes: range, seed: int, steps: int = 10,
                 lr: float = 3e-3) -> np.ndarray:
    """A pre-trained expert as in the paper: Adam (lr 3e-3), full-batch steps on the search
    split's samples of `classes`, from N(0, 0.01²) parameters. Manual backprop keeps it numpy."""
    rng = np.random.default_rng(seed)
    theta = init_params(rng).astype(np.float64)
    mask = np.isin(data.y_train, list(classes))
    x, y = data.x_train[mask].astype(np.float64), data.y_train[mask]
    onehot = np.eye(N_OUT)[y]
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    b1_, b2_, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        w1, b1, w2, b2 = unflatten(theta)
        pre = x @ w1 + b1
        h = np.maximum(pre, 0)
        logits = h @ w2 + b2
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g_logits = (p - onehot) / len(x)
        g_w2 = h.T @ g_logits
        g_b2 = g_logits.sum(0)
        g_h = g_logits @ w2.T
        g_h[pre <= 0] = 0
        g_w1 = x.T @ g_h
        g_b1 = g_h.sum(0)
        grad = np.concatenate([g_w1.ravel(), g_b1, g_w2.ravel(), g_b2])
        m = b1_ * m + (1 - b1_) * grad
        v = b2_ * v + (1 - b2_) * grad**2
        theta -= lr * (m / (1 - b1_**t)) / (np.sqrt(v / (1 - b2_**t)) + eps)
    return theta.astype(np.float32)
