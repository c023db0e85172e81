"""Uncertainty from a stochastic model's draws, and what it buys: detecting adversarial images
and abstaining on doubtful ones.

The first seed's title promises uncertainty but never measures it; these are the standard
measures (reference-facts §6), from the S softmax draws p_s (S, N, C) stored in the shards:

* predictive entropy H[p̄] (p̄ = mean of the draws): total uncertainty;
* expected entropy E_s H[p_s]: the noise each draw carries (aleatoric);
* mutual information H[p̄] − E_s H[p_s]: disagreement between draws (epistemic);
* variance of p_s over draws, averaged over classes.

A deterministic model has one draw: its predictive entropy is that of its softmax and the
other three are zero, so only predictive entropy is reported for it.

Detection treats clean images as negatives (0) and adversarial ones as positives (1), scored
by a measure (higher = more suspect). Selective prediction keeps the most confident fraction
(lowest measure) and reports accuracy there and the area under the risk–coverage curve.
Plain numpy: reports recompute everything from stored results.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medhpc.metrics import entropy, roc_auc, uncertainty_measures

#: Measures in report order; deterministic models have only the first.
MEASURES: tuple[str, ...] = ("predictive_entropy", "expected_entropy", "mutual_information", "variance")
LABELS: dict[str, str] = {
    "predictive_entropy": "predictive entropy",
    "expected_entropy": "expected entropy",
    "mutual_information": "mutual information",
    "variance": "variance",
}


_entropy = entropy
measures = uncertainty_measures


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1); positives score high.

    Tied scores form one step (a diagonal segment), so the trapezoidal area equals
    :func:`medhpc.metrics.roc_auc` with ties counted half.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.zeros(last.size + 1)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.zeros(last.size + 1)
    return fpr, tpr


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = 0.05) -> float | None:
    """The highest true-positive rate of a threshold whose false-positive rate is <= ``fpr``."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return None
    f, t = roc_curve(y, scores)
    return float(t[f <= fpr + 1e-12].max())


def detection(clean: np.ndarray, adversarial: np.ndarray, fpr: float = 0.05) -> dict[str, Any]:
    """Clean (0) vs adversarial (1) scored by one measure: AUROC, TPR at ``fpr`` and the curve."""
    clean, adversarial = np.asarray(clean, np.float64), np.asarray(adversarial, np.float64)
    labels = np.r_[np.zeros(clean.size), np.ones(adversarial.size)]
    scores = np.r_[clean, adversarial]
    out: dict[str, Any] = {"n_clean": int(clean.size), "n_adversarial": int(adversarial.size)}
    out["auroc"] = roc_auc(labels, scores)
    out["tpr_at_fpr"] = tpr_at_fpr(labels, scores, fpr)
    if out["auroc"] is not None:
        f, t = roc_curve(labels, scores)
        out["roc"] = thin_curve(f, t)
    return out


def risk_coverage(correct: np.ndarray, uncertainty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage k/N, risk among the k most confident) for k = 1..N.

    Images are ranked by increasing uncertainty; ties keep their stored order (a stable
    sort), so the curve is reproducible.
    """
    ok = np.asarray(correct).astype(bool)
    order = np.argsort(np.asarray(uncertainty, dtype=np.float64), kind="mergesort")
    errors = np.cumsum(~ok[order])
    k = np.arange(1, ok.size + 1)
    return k / ok.size, errors / k


def selective(
    correct: np.ndarray, uncertainty: np.ndarray, coverages: tuple[float, ...] = (0.8, 0.9)
) -> dict[str, Any]:
    """Accuracy when keeping the ``c`` most confident fraction (ceil(c N) images), for each c,
    and the area under the risk–coverage curve (AURC: the mean risk over k = 1..N)."""
    ok = np.asarray(correct).astype(bool)
    if ok.size == 0:
        return {"n": 0, "accuracy": None, "aurc": None, "at_coverage": {f"{c:g}": None for c in coverages}}
    cov, risk = risk_coverage(ok, uncertainty)
    at = {}
    for c in coverages:
        k = max(1, math.ceil(c * ok.size - 1e-9))
        at[f"{c:g}"] = float(1.0 - risk[k - 1])
    return {"n": int(ok.size), "accuracy": float(ok.mean()), "aurc": float(risk.mean()), "at_coverage": at,
            "curve": thin_curve(cov, risk)}  # fmt: skip


def thin_curve(x: np.ndarray, y: np.ndarray, points: int = 201) -> list[list[float]]:
    """At most ``points`` (x, y) pairs of a curve for plotting (ends kept), rounded to 5 digits."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size > points:
        keep = np.unique(np.round(np.linspace(0, x.size - 1, points)).astype(int))
        x, y = x[keep], y[keep]
    return [[round(float(a), 5), round(float(b), 5)] for a, b in zip(x, y, strict=True)]


def attack_uncertainty(
    fields: dict[str, np.ndarray],
    *,
    fpr: float = 0.05,
    coverages: tuple[float, ...] = (0.8, 0.9),
    detect: bool = True,
) -> dict[str, Any]:
    """Every measure, detection result and selective-prediction result of one attack's shards.

    ``fields`` holds the shard fields ``labels``, ``clean_pred``, ``adv_pred``, ``success``,
    ``clean_probs``, ``adv_probs`` and, for a stochastic model, ``clean_sample_probs`` and
    ``adv_sample_probs`` (S, N, C). Detection is skipped for attack ``none`` (``detect``):
    its adversarial images are the clean ones.

    Returns ``{"stochastic", "measures": {name: {"clean_mean", "adv_mean"}},
    "detection": {name: {"all": ..., "successful": ...}}, "selective": {name: {"clean",
    "adversarial", "mixed"}}}``. ``successful`` keeps only the images the attack succeeded on
    (their clean and adversarial versions); ``mixed`` pools the clean and adversarial sets.
    """
    stochastic = "clean_sample_probs" in fields and fields["clean_sample_probs"].shape[0] > 0
    if stochastic:
        clean_m, adv_m = measures(fields["clean_sample_probs"]), measures(fields["adv_sample_probs"])
    else:
        clean_m = {"predictive_entropy": _entropy(fields["clean_probs"])}
        adv_m = {"predictive_entropy": _entropy(fields["adv_probs"])}
    labels = np.asarray(fields["labels"])
    ok_clean = np.asarray(fields["clean_pred"]) == labels
    ok_adv = np.asarray(fields["adv_pred"]) == labels
    success = np.asarray(fields["success"]).astype(bool)
    out: dict[str, Any] = {"stochastic": bool(stochastic), "n": int(labels.size), "n_successful": int(success.sum()),
                           "measures": {}, "detection": {}, "selective": {}}  # fmt: skip
    for name in clean_m:
        c, a = clean_m[name], adv_m[name]
        out["measures"][name] = {"clean_mean": float(c.mean()) if c.size else None,
                                 "adv_mean": float(a.mean()) if a.size else None}  # fmt: skip
        if detect:
            out["detection"][name] = {"all": detection(c, a, fpr), "successful": detection(c[success], a[success], fpr)}
        out["selective"][name] = {
            "clean": selective(ok_clean, c, coverages),
            "adversarial": selective(ok_adv, a, coverages),
            "mixed": selective(np.r_[ok_clean, ok_adv], np.r_[c, a], coverages),
        }
    return out
