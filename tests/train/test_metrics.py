"""Appendix A metrics against hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medhpc.metrics import binary_metrics, roc_auc, wilson_interval


def test_binary_metrics_by_hand() -> None:
    # labels:  1 1 1 1 0 0 0 0 0 0 ; predicted positive for the first 3 and two negatives.
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p1 = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.55, 0.3, 0.2, 0.1, 0.05])
    m = binary_metrics(labels, np.stack([1 - p1, p1], 1))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 2, 1, 4)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["specificity"] == pytest.approx(4 / 6)
    # AUC: of the 24 (positive, negative) pairs, the positive scores higher in all but
    # (0.4 vs 0.6) and (0.4 vs 0.55): 22/24.
    assert m["roc_auc"] == pytest.approx(22 / 24)
    lo, hi = m["accuracy_ci95"]
    assert lo == pytest.approx(0.3968, abs=1e-4) and hi == pytest.approx(0.8922, abs=1e-4)


def test_roc_auc_counts_ties_half_and_matches_pair_counting() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    pairs = [
        1.0 if sp > sn else 0.5 if sp == sn else 0.0
        for sp, sn in itertools.product(scores[labels == 1], scores[labels == 0])
    ]
    assert roc_auc(labels, scores) == pytest.approx(np.mean(pairs))
    assert roc_auc(np.ones(5), np.arange(5.0)) is None


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)


def test_degenerate_predictions_do_not_divide_by_zero() -> None:
    labels = np.array([0, 0, 1])
    probs = np.array([[0.9, 0.1]] * 3)  # never predicts positive
    m = binary_metrics(labels, probs)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["tp"] == 0 and m["fn"] == 1
