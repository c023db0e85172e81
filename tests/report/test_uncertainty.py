"""Uncertainty measures, detection and selective prediction against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medhpc.metrics import auc_interval, roc_auc
from medhpc.report.uncertainty import (
    attack_uncertainty,
    detection,
    measures,
    risk_coverage,
    roc_curve,
    selective,
    tpr_at_fpr,
)

LN2 = math.log(2)


def test_measures_separate_agreeing_noise_from_disagreement() -> None:
    # image 0: both draws say 50/50 (aleatoric); image 1: the draws disagree completely (epistemic)
    p = np.array([[[0.5, 0.5], [1.0, 0.0]], [[0.5, 0.5], [0.0, 1.0]]])  # (S=2, N=2, C=2)
    m = measures(p)
    np.testing.assert_allclose(m["predictive_entropy"], [LN2, LN2])
    np.testing.assert_allclose(m["expected_entropy"], [LN2, 0.0])
    np.testing.assert_allclose(m["mutual_information"], [0.0, LN2])
    np.testing.assert_allclose(m["variance"], [0.0, 0.25])


def test_measures_of_three_draws() -> None:
    p = np.array([[[0.9, 0.1]], [[0.6, 0.4]], [[0.3, 0.7]]])
    m = measures(p)
    mean = np.array([0.6, 0.4])
    h = lambda q: -(q * np.log(q)).sum()  # noqa: E731
    assert m["predictive_entropy"][0] == pytest.approx(h(mean))
    assert m["expected_entropy"][0] == pytest.approx((h(p[0, 0]) + h(p[1, 0]) + h(p[2, 0])) / 3)
    assert m["mutual_information"][0] == pytest.approx(h(mean) - (h(p[0, 0]) + h(p[1, 0]) + h(p[2, 0])) / 3)
    assert m["variance"][0] == pytest.approx(np.var([0.9, 0.6, 0.3]))  # same for both classes
    with pytest.raises(ValueError, match="S, N, C"):
        measures(np.zeros((2, 2)))


def test_roc_curve_tpr_at_fpr_and_auc_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    fpr, tpr = roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75) == roc_auc(y, s)
    assert tpr_at_fpr(y, s, 0.05) == 0.5
    assert tpr_at_fpr(y, s, 0.5) == 1.0
    assert tpr_at_fpr(np.ones(3), s[:3]) is None


def test_tied_scores_make_one_diagonal_step() -> None:
    y = np.array([0, 1, 0, 1])
    s = np.array([0.5, 0.5, 0.2, 0.9])
    fpr, tpr = roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s)) == pytest.approx(0.875)


def test_detection_scores_clean_as_negatives() -> None:
    d = detection(np.array([0.1, 0.2, 0.3]), np.array([0.25, 0.9]))
    # pairs (adv > clean): 0.25 beats 0.1, 0.2; 0.9 beats all three -> 5 / 6
    assert d["auroc"] == pytest.approx(5 / 6)
    assert d["n_clean"] == 3 and d["n_adversarial"] == 2
    assert d["tpr_at_fpr"] == 0.5  # only 0.9 is above every clean score
    assert d["roc"][0] == [0.0, 0.0] and d["roc"][-1] == [1.0, 1.0]
    empty = detection(np.array([0.1]), np.array([]))
    assert empty["auroc"] is None and "roc" not in empty


def test_risk_coverage_accuracy_at_coverage_and_aurc_by_hand() -> None:
    correct = np.array([True, False, True, True])
    unc = np.array([0.1, 0.2, 0.3, 0.05])
    cov, risk = risk_coverage(correct, unc)
    # most confident first: #3 (ok), #0 (ok), #1 (wrong), #2 (ok)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 4])
    r = selective(correct, unc, coverages=(0.5, 0.8, 0.9))
    assert r["aurc"] == pytest.approx((1 / 3 + 1 / 4) / 4)
    assert r["at_coverage"] == {"0.5": 1.0, "0.8": 0.75, "0.9": 0.75}  # ceil(0.8 * 4) = 4 images
    assert r["accuracy"] == 0.75 and r["n"] == 4
    assert selective(np.zeros(0, bool), np.zeros(0))["aurc"] is None


def test_attack_uncertainty_filters_to_successful_attacks() -> None:
    # 4 images, 2 draws: the draws agree on every clean image and disagree on adversarial 0, 1
    clean = np.array([[[0.9, 0.1]] * 4] * 2)  # (S=2, N=4, C=2)
    adv = clean.copy()
    adv[0, :2], adv[1, :2] = [0.9, 0.1], [0.1, 0.9]
    fields = {
        "labels": np.array([0, 0, 0, 0]), "clean_pred": np.array([0, 0, 0, 0]),
        "adv_pred": np.array([1, 0, 0, 0]), "success": np.array([True, False, False, False]),
        "clean_probs": clean.mean(0), "adv_probs": adv.mean(0),
        "clean_sample_probs": clean, "adv_sample_probs": adv,
    }  # fmt: skip
    u = attack_uncertainty(fields, fpr=0.05, coverages=(0.5,))
    assert u["stochastic"] and u["n"] == 4 and u["n_successful"] == 1
    mi = u["detection"]["mutual_information"]
    # all: adversarial 0 and 1 have MI > 0, 2 and 3 tie with every clean image (MI 0: the draws agree)
    assert mi["all"]["auroc"] == pytest.approx((2 * 4 + 2 * 4 * 0.5) / 16)
    assert mi["successful"]["auroc"] == 1.0 and mi["successful"]["n_clean"] == 1
    sel = u["selective"]["predictive_entropy"]
    assert sel["clean"]["accuracy"] == 1.0 and sel["adversarial"]["accuracy"] == 0.75
    assert sel["mixed"]["n"] == 8 and sel["mixed"]["accuracy"] == pytest.approx(7 / 8)
    # the wrong adversarial image has maximal entropy: abstaining on half removes it
    assert sel["adversarial"]["at_coverage"]["0.5"] == 1.0
    assert set(u["measures"]) == {"predictive_entropy", "expected_entropy", "mutual_information", "variance"}


def test_deterministic_models_get_predictive_entropy_only_and_none_skips_detection() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    fields = {"labels": np.array([0, 1]), "clean_pred": np.array([0, 0]), "adv_pred": np.array([0, 0]),
              "success": np.array([False, False]), "clean_probs": probs, "adv_probs": probs}  # fmt: skip
    u = attack_uncertainty(fields, detect=False)
    assert not u["stochastic"] and list(u["measures"]) == ["predictive_entropy"] and u["detection"] == {}
    assert u["measures"]["predictive_entropy"]["clean_mean"] == pytest.approx(
        (-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) - (0.6 * math.log(0.6) + 0.4 * math.log(0.4))) / 2
    )


def test_auc_interval_hanley_mcneil() -> None:
    a, n1, n2 = 0.8, 10, 20
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2))
    lo, hi = auc_interval(a, n1, n2)  # type: ignore[misc]
    assert lo == pytest.approx(a - 1.959963984540054 * se) and hi == pytest.approx(min(1.0, a + 1.959963984540054 * se))
    assert auc_interval(1.0, 5, 5) == (1.0, 1.0) and auc_interval(0.5, 0, 5) is None
