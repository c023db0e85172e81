"""Classification metrics of the first seed's Appendix A, with a confidence interval.

Plain numpy so that reports can recompute them from stored predictions. The positive class
is 1 (referable retinopathy, pneumonia).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion: sensible at 0 %, 100 % and small n (unlike the
    normal approximation, which can leave [0, 1])."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)  # exact at the edges, not 1 - 1e-16
    return (lo, hi)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted half); None when
    only one class is present."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auc_interval(auc: float, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float] | None:
    """Hanley & McNeil (1982) interval for a ROC-AUC from ``n_pos`` positives and ``n_neg``
    negatives (their exponential approximation of the AUC's standard error), clipped to [0, 1]."""
    if n_pos == 0 or n_neg == 0:
        return None
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    half = z * math.sqrt(max(var, 0.0))
    return (max(0.0, auc - half), min(1.0, auc + half))


def entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats along the last axis; 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(-1)


def uncertainty_measures(sample_probs: np.ndarray) -> dict[str, np.ndarray]:
    """The four uncertainty measures per image from softmax draws ``(S, N, C)``: predictive
    entropy H[p̄], expected entropy E_s H[p_s], mutual information (their difference) and the
    variance of p_s over draws averaged over classes (reference-facts §6).

    Mutual information is clipped at 0 (it is >= 0 exactly; rounding can dip below).
    """
    p = np.asarray(sample_probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"sample_probs must be (S, N, C), got shape {p.shape}")
    mean = p.mean(0)
    predictive = entropy(mean)
    expected = entropy(p).mean(0)
    return {
        "predictive_entropy": predictive,
        "expected_entropy": expected,
        "mutual_information": np.maximum(predictive - expected, 0.0),
        "variance": p.var(0).mean(-1),
    }


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy (with 95 % Wilson interval), precision, recall, F1, ROC-AUC, balanced accuracy
    and the confusion counts, from labels (N,) and class probabilities (N, 2).

    The prediction is the arg-max class; ROC-AUC ranks by the positive-class probability.
    Precision (or recall) with no predicted (or actual) positives is 0.0.
    """
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be (N, classes) for N={labels.shape[0]} labels, got {probs.shape}")
    preds = probs.argmax(axis=1)
    n = int(labels.size)
    correct = int((preds == labels).sum())
    out: dict[str, Any] = {"n": n, "accuracy": _ratio(correct, n), "accuracy_ci95": list(wilson_interval(correct, n))}
    if probs.shape[1] == 2:
        tp = int(((preds == 1) & (labels == 1)).sum())
        fp = int(((preds == 1) & (labels == 0)).sum())
        fn = int(((preds == 0) & (labels == 1)).sum())
        tn = int(((preds == 0) & (labels == 0)).sum())
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        out.update(
            precision=precision,
            recall=recall,
            f1=_ratio(2 * tp, 2 * tp + fp + fn),
            specificity=_ratio(tn, tn + fp),
            balanced_accuracy=(recall + _ratio(tn, tn + fp)) / 2.0,
            roc_auc=roc_auc(labels, probs[:, 1]),
            tp=tp,
            fp=fp,
            fn=fn,
            tn=tn,
        )
    else:  # macro averages, one-vs-rest AUC
        per = []
        for c in range(probs.shape[1]):
            tp = int(((preds == c) & (labels == c)).sum())
            fp = int(((preds == c) & (labels != c)).sum())
            fn = int(((preds != c) & (labels == c)).sum())
            per.append((_ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)))
        aucs = [roc_auc(labels == c, probs[:, c]) for c in range(probs.shape[1])]
        valid = [a for a in aucs if a is not None]
        out.update(
            precision=float(np.mean([p[0] for p in per])),
            recall=float(np.mean([p[1] for p in per])),
            f1=float(np.mean([p[2] for p in per])),
            balanced_accuracy=float(np.mean([p[1] for p in per])),
            roc_auc=float(np.mean(valid)) if valid else None,
        )
    return out
