"""Uncertainty detection against a non-adaptive and an adaptive attacker: one shard set of an
attack on a detector (its spec is ``calibrated``, e.g. ``adaptive``) beside the set of the attack
it is when it ignores the detector (:meth:`medhpc.attacks.AttackConfig.non_adaptive`: PGD).

The detector is the one the attack was run against, as its shards record it (``meta`` key
``detector``, :meth:`medhpc.attacks.detector.Detector.to_dict`); every image of both sets is
scored exactly as the detector was fitted (:func:`medhpc.attacks.detector.score_values`), and
an image is **rejected** (abstained on) when its score is above the threshold τ.

Per attack (:func:`attack_metrics`), over the set's images:

* robust accuracy: adversarial prediction = label, no detector;
* detection AUROC: negatives the set's clean images, positives the adversarial images the
  attack succeeded on (the shard's ``success``), higher score = more suspect; Hanley–McNeil;
* TPR at τ: the share of those successful adversarial images the detector rejects;
* system robust accuracy: the share of images classified correctly **or** rejected under
  attack (what the system of classifier and abstention gets right);
* selective risk at each coverage c: the error rate among the ⌈c N⌉ adversarial images with
  the lowest score (ties in stored order).

Clean (:func:`clean_metrics`, the calibrated set's clean fields, test images): accuracy,
coverage (not rejected), selective accuracy (accuracy on the accepted) and the FPR on test
(rejected). The val side: the images the detector was fitted on, the share it rejected there
and τ. Every proportion is ``{"k", "n", "value", "interval"}`` with its 95 % Wilson interval;
every AUROC ``{"value", "interval", "n_positive", "n_negative"}``. Plain numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medhpc.attacks.detector import Detector, score_values
from medhpc.metrics import auc_interval, roc_auc, wilson_interval
from medhpc.report.errors import ReportError


def proportion(k: int, n: int) -> dict[str, Any]:
    """``k`` of ``n`` with its 95 % Wilson interval (value and interval None when n = 0)."""
    k, n = int(k), int(n)
    if n == 0:
        return {"k": 0, "n": 0, "value": None, "interval": None}
    return {"k": k, "n": n, "value": k / n, "interval": list(wilson_interval(k, n))}


def auroc(negatives: np.ndarray, positives: np.ndarray) -> dict[str, Any]:
    """Negatives (0) against positives (1), higher score = positive, with the Hanley–McNeil
    interval; value None when either side is empty."""
    neg, pos = np.asarray(negatives, np.float64), np.asarray(positives, np.float64)
    auc = roc_auc(np.r_[np.zeros(neg.size), np.ones(pos.size)], np.r_[neg, pos])
    ci = None if auc is None else auc_interval(auc, pos.size, neg.size)
    return {"value": auc, "interval": None if ci is None else list(ci), "n_positive": int(pos.size),
            "n_negative": int(neg.size)}  # fmt: skip


def selective_risk(correct: np.ndarray, scores: np.ndarray, coverage: float) -> dict[str, Any]:
    """Errors among the ⌈coverage · N⌉ images of lowest score (a stable sort: ties in stored
    order), as a proportion of those kept."""
    ok = np.asarray(correct).astype(bool)
    if ok.size == 0:
        return proportion(0, 0)
    k = max(1, math.ceil(coverage * ok.size - 1e-9))
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="mergesort")[:k]
    return proportion(int((~ok[order]).sum()), k)


def set_detector(shards: Sequence[Any], folder: str) -> Detector:
    """The one detector every shard of a calibrated set records (``ShardInfo``s, their
    ``attrs["meta"]["detector"]``); a :class:`ReportError` naming the set and the shard when
    one has none, a damaged one or another than the first shard's."""
    first: tuple[Any, dict[str, Any]] | None = None
    for info in shards:
        meta = info.attrs.get("meta") or {}
        data = meta.get("detector") if isinstance(meta, Mapping) else None
        if data is None:
            raise ReportError(f"shard set {folder}: shard {info.path.name} records no detector (meta key "
                              "'detector'): an attack on a detector needs the one it attacked; "
                              "rerun its attack job")  # fmt: skip
        if first is None:
            first = (info, dict(data))
        elif dict(data) != first[1]:
            diff = sorted(k for k in set(data) | set(first[1]) if data.get(k) != first[1].get(k))
            raise ReportError(f"shard set {folder}: shard {info.path.name} records another detector than "
                              f"{first[0].path.name} ({', '.join(diff)} differ): every shard of a set must attack one "
                              "detector; delete the set (and its detector.json) and rerun its attack jobs")  # fmt: skip
    if first is None:
        raise ReportError(f"shard set {folder}: no shards")
    source = f"shard set {folder}: shard {first[0].path.name}: meta.detector"
    try:
        return Detector.from_dict(first[1], source=source)
    except (TypeError, ValueError) as exc:  # a key of the wrong type, an unknown score
        text = str(exc)
        raise ReportError(text if text.startswith(source) else f"{source}: {text}") from None


def scores(det: Detector, fields: Mapping[str, np.ndarray], which: str) -> np.ndarray:
    """The detector's score of the ``clean`` or ``adv`` images of a set's fields, computed as
    it was fitted (from the stored softmax and, for a stochastic model, its draws)."""
    draws = fields.get(f"{which}_sample_probs")
    return score_values(det.score, fields[f"{which}_probs"], None if draws is None else draws)


def check_samples(det: Detector, samples: int, folder: str) -> None:
    """A set scores as the detector was fitted only with as many draws per image."""
    if int(samples) != det.samples:
        raise ReportError(f"shard set {folder}: {samples} draws per image stored, but the detector scored "
                          f"{det.samples}: its scores would not be the ones its threshold was fitted on")  # fmt: skip


def clean_metrics(det: Detector, fields: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The detector on the clean test images: accuracy, coverage, selective accuracy, FPR."""
    s = scores(det, fields, "clean")
    rejected = det.rejects(s)
    ok = np.asarray(fields["clean_pred"]) == np.asarray(fields["labels"])
    n = ok.size
    return {"n": int(n), "accuracy": proportion(ok.sum(), n), "coverage": proportion((~rejected).sum(), n),
            "selective_accuracy": proportion((ok & ~rejected).sum(), (~rejected).sum()),
            "fpr": proportion(rejected.sum(), n), "score_mean": float(s.mean()) if n else None}  # fmt: skip


def attack_metrics(det: Detector, fields: Mapping[str, np.ndarray], coverages: Sequence[float]) -> dict[str, Any]:
    """One attack's set under the detector (see the module's docstring); the negatives of its
    AUROC are the set's own clean images."""
    clean = scores(det, fields, "clean")
    adv = scores(det, fields, "adv")
    rejected = det.rejects(adv)
    correct = np.asarray(fields["adv_pred"]) == np.asarray(fields["labels"])
    success = np.asarray(fields["success"]).astype(bool)
    n = correct.size
    return {
        "n": int(n), "n_successful": int(success.sum()),
        "robust_accuracy": proportion(correct.sum(), n),
        "rejected": proportion(rejected.sum(), n),
        "tpr_at_threshold": proportion((rejected & success).sum(), success.sum()),
        "system_accuracy": proportion((correct | rejected).sum(), n),
        "detection_auroc": auroc(clean, adv[success]),
        "selective_risk": {f"{c:g}": selective_risk(correct, adv, c) for c in coverages},
        "score_mean": float(adv.mean()) if n else None,
    }  # fmt: skip


def val_metrics(det: Detector) -> dict[str, Any]:
    """What the detector was fitted at: τ, the images of its split and the share it rejected."""
    return {"split": det.split, "n": det.n, "rejected": det.rejected, "fpr": proportion(det.rejected, det.n),
            "fpr_asked": det.fpr, "threshold": det.threshold, "target": det.target}  # fmt: skip


def adaptive_block(
    det: Detector, fields: Mapping[str, np.ndarray], coverages: Sequence[float],
    counterpart: tuple[str, str, Mapping[str, np.ndarray], bool] | None, looked_for: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The ``adaptive`` block of a calibrated set's row: its detector, the val side, the clean
    test images, the attack itself (``adaptive``) and its non-adaptive counterpart
    (``non_adaptive``: ``(name, shard folder, fields, same images)``, None where the model has
    no such set; ``non_adaptive_attack`` names the attack looked for)."""
    other = None
    if counterpart is not None:
        name, folder, f, same = counterpart
        other = {"name": name, "shards": folder, "same_images": bool(same), **attack_metrics(det, f, coverages)}
    return {"score": det.score, "detector": det.to_dict(), "val": val_metrics(det), "clean": clean_metrics(det, fields),
            "adaptive": attack_metrics(det, fields, coverages), "non_adaptive_attack": looked_for,
            "non_adaptive": other}  # fmt: skip


__all__ = [
    "adaptive_block",
    "attack_metrics",
    "auroc",
    "check_samples",
    "clean_metrics",
    "proportion",
    "scores",
    "selective_risk",
    "set_detector",
    "val_metrics",
]
