"""Metrics against hand-computed values (sklearn's step-wise AP, ties as one threshold)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dymn_edge.metrics import (
    accuracy, average_precision, max_prob_diff, mean_average_precision, to_probabilities,
    topk_overlap,
)


def test_ap_sklearn_doc_example() -> None:
    # sklearn docs: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8333...
    assert average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == \
        pytest.approx(5 / 6)


def test_ap_ties_form_one_threshold() -> None:
    # threshold 0.5: P=1/2, R=1/2; threshold 0.2: P=2/3, R=1 -> 0.5*0.5 + 0.5*2/3
    ap = average_precision(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 1]))
    assert ap == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    # order of tied items must not matter
    assert average_precision(np.array([0.5, 0.5, 0.2]), np.array([0, 1, 1])) == pytest.approx(ap)


def test_ap_perfect_worst_and_undefined() -> None:
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    # the only positive ranked last of 4: P=1/4 at R=1
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([0, 0, 0, 1])) == 0.25
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


def test_map_skips_classes_without_positives() -> None:
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.6, 0.3, 0.5]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    # class 0: perfect (1.0); class 1: perfect (1.0); class 2: no positives -> skipped
    assert mean_average_precision(scores, targets) == 1.0
    targets[2, 0] = 1  # class 0 now: positives at 0.9 and 0.6 (ranks 1 and 2) -> still 1.0
    targets[0, 1] = 1  # class 1: positives at 0.8 (rank 1) and 0.1 (rank 3): (1 + 2/3) / 2
    assert mean_average_precision(scores, targets) == pytest.approx((1.0 + (1 + 2 / 3) / 2) / 2)


def test_accuracy_indices_and_onehot() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6], [0.7, 0.3]])
    labels = np.array([1, 0, 0, 0])
    assert accuracy(scores, labels) == 0.75
    assert accuracy(scores, np.eye(2)[labels]) == 0.75


def test_topk_overlap_and_prob_diff() -> None:
    ref = np.array([[0.9, 0.5, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    out = np.array([[0.4, 0.5, 0.1, 0.0], [0.1, 0.2, 0.35, 0.4]])
    assert topk_overlap(ref, out, 1) == 0.5  # row 0 differs (0 vs 1), row 1 agrees (3)
    assert topk_overlap(ref, ref, 1) == 1.0
    assert topk_overlap(ref, out, 2) == 1.0  # same top-2 sets in both rows
    assert topk_overlap(ref, out, 10) == 1.0  # k clipped to the class count
    assert max_prob_diff(ref, out) == pytest.approx(0.5)


def test_to_probabilities() -> None:
    p = to_probabilities(np.array([[0.0, 1000.0, -1000.0]]), "sigmoid")
    assert np.allclose(p, [[0.5, 1.0, 0.0]])
    q = to_probabilities(np.array([[1.0, 1.0]]), "softmax")
    assert np.allclose(q, [[0.5, 0.5]])
    with pytest.raises(ValueError):
        to_probabilities(np.zeros((1, 2)), "relu")
