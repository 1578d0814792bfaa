"""Tagging metrics in NumPy (torch-free, no scikit-learn).

:func:`average_precision` is the step-wise AP of ``sklearn.metrics.average_precision_score``
(sum over distinct thresholds of (R_n - R_{n-1}) * P_n; tied scores form one threshold), so
numbers here compare with the paper's and with EfficientAT's evaluation code.
"""

from __future__ import annotations

import math

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class; ``nan`` when ``targets`` holds no positive (AP is undefined there)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(targets).ravel() > 0
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and targets {y.shape} differ in length")
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # Last index of each run of equal scores: every threshold counts all its ties at once.
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last].astype(np.float64)
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mAP over the classes with at least one positive (others would be undefined)."""
    s = np.asarray(scores)
    t = np.asarray(targets)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and targets {t.shape} must both be (N, C)")
    aps = [average_precision(s[:, c], t[:, c]) for c in range(s.shape[1]) if t[:, c].any()]
    return float(np.mean(aps)) if aps else math.nan


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy; ``labels`` are class indices (N,) or one-hot rows (N, C)."""
    s = np.asarray(scores)
    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab.argmax(axis=1)
    if s.ndim != 2 or lab.shape != (s.shape[0],):
        raise ValueError(f"scores {s.shape} and labels {lab.shape} do not match")
    return float(np.mean(s.argmax(axis=1) == lab)) if s.shape[0] else math.nan


def topk_overlap(ref_scores: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Mean fraction of the reference's top-k classes that are also in the top-k of ``scores``.

    ``k=1`` is top-1 agreement. Ordering inside the top k does not matter.
    """
    r = np.asarray(ref_scores)
    s = np.asarray(scores)
    if r.shape != s.shape or r.ndim != 2:
        raise ValueError(f"ref {r.shape} and scores {s.shape} must both be (N, C)")
    k = min(int(k), r.shape[1])
    if k < 1:
        raise ValueError("k must be >= 1")
    top_r = np.argsort(-r, axis=1, kind="stable")[:, :k]
    top_s = np.argsort(-s, axis=1, kind="stable")[:, :k]
    hits = [len(set(a) & set(b)) for a, b in zip(top_r.tolist(), top_s.tolist())]
    return float(np.mean(hits) / k) if hits else math.nan


def max_prob_diff(ref_probs: np.ndarray, probs: np.ndarray) -> float:
    """Largest absolute difference between two probability arrays of the same shape."""
    r = np.asarray(ref_probs, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if r.shape != p.shape:
        raise ValueError(f"shapes differ: {r.shape} vs {p.shape}")
    return float(np.max(np.abs(r - p))) if r.size else 0.0


def to_probabilities(logits: np.ndarray, activation: str = "sigmoid") -> np.ndarray:
    """Logits -> probabilities the way the model's metadata says (``sigmoid`` or ``softmax``)."""
    x = np.asarray(logits, dtype=np.float64)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if activation == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    raise ValueError(f"unknown output activation '{activation}'")
