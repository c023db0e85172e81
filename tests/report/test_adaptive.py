"""The detector against a non-adaptive and an adaptive attacker: the evaluation's ``adaptive``
block against a hand computation on real shards (conftest.py's ``add_adaptive``), a missing
counterpart, damaged sets, the table and the report's figure."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from medhpc.metrics import auc_interval, wilson_interval
from medhpc.report import ReportSettings, tables
from medhpc.report.analyse import attack_rows
from medhpc.report.build import build_report
from medhpc.report.results import ReportError, load_results
from medhpc.report.table import Cell

PNG = b"\x89PNG\r\n\x1a\n"


def _h(conf: tuple[float, ...]) -> np.ndarray:
    """Two-class entropy in nats of a top probability, by its formula."""
    c = np.asarray(conf, dtype=np.float64)
    return -(c * np.log(c) + (1 - c) * np.log(1 - c))


def _pairwise_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(positive scores above negative), ties half: the Mann–Whitney count, pair by pair."""
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def _check(p: dict, k: int, n: int) -> None:  # type: ignore[type-arg]
    assert (p["k"], p["n"]) == (k, n) and p["value"] == pytest.approx(k / n)
    assert tuple(p["interval"]) == wilson_interval(k, n)


def test_the_adaptive_block_matches_a_hand_computation(stored, add_adaptive, adaptive_case) -> None:  # type: ignore[no-untyped-def]
    case = adaptive_case
    ADV_CONF, ADV_WRONG, CLEAN_CONF, CLEAN_WRONG = case.ADV_CONF, case.ADV_WRONG, case.CLEAN_CONF, case.CLEAN_WRONG
    rows = add_adaptive(stored, "linear")
    assert [r["name"] for r in rows] == ["adaptive-linf-eps0.03-s4-entropy", "pgd-linf-eps0.03-s4"]
    assert "adaptive" not in rows[1]  # PGD attacks no detector
    b = rows[0]["adaptive"]
    assert b["detector"] == case.DETECTOR and b["score"] == "predictive_entropy"
    assert b["non_adaptive_attack"] == "pgd-linf-eps0.03-s4" and b["non_adaptive"]["name"] == "pgd-linf-eps0.03-s4"
    assert b["non_adaptive"]["shards"] == rows[1]["shards"] and b["non_adaptive"]["same_images"] is True

    # the val side: as the detector recorded it
    _check(b["val"]["fpr"], 2, 40)
    assert (b["val"]["threshold"], b["val"]["n"], b["val"]["fpr_asked"]) == (0.5, 40, 0.05)

    # by hand: rejected = entropy above τ = 0.5 nats
    n, tau = 10, 0.5
    ok_clean = np.ones(n, bool)
    ok_clean[list(CLEAN_WRONG)] = False
    ok_adv = np.ones(n, bool)
    ok_adv[list(ADV_WRONG)] = False
    success = ok_clean & ~ok_adv
    clean_h = _h(CLEAN_CONF)
    rej_clean = clean_h > tau
    assert list(np.flatnonzero(rej_clean)) == [7, 8, 9] and list(np.flatnonzero(success)) == [0, 1, 2, 4, 5, 6]
    c = b["clean"]
    _check(c["accuracy"], 8, 10)
    _check(c["coverage"], 7, 10)
    _check(c["selective_accuracy"], 6, 7)  # accepted 0..6, of which 3 is wrong
    _check(c["fpr"], 3, 10)
    assert (int(ok_clean.sum()), int((~rej_clean).sum()), int((ok_clean & ~rej_clean).sum())) == (8, 7, 6)

    expect = {"pgd": (5, 8, 48 / 60), "adaptive": (1, 4, 26 / 60)}  # (TPR k of 6, system k of 10, AUROC)
    for kind, block in (("pgd", b["non_adaptive"]), ("adaptive", b["adaptive"])):
        adv_h = _h(ADV_CONF[kind])
        rej = adv_h > tau
        tpr_k, sys_k, auc = expect[kind]
        assert int((rej & success).sum()) == tpr_k and int((ok_adv | rej).sum()) == sys_k
        assert _pairwise_auc(clean_h, adv_h[success]) == pytest.approx(auc)
        _check(block["robust_accuracy"], 2, 10)  # 7 and 8 stay correct
        _check(block["tpr_at_threshold"], tpr_k, 6)
        _check(block["system_accuracy"], sys_k, 10)
        _check(block["rejected"], int(rej.sum()), 10)
        a = block["detection_auroc"]
        assert a["value"] == pytest.approx(auc) and (a["n_positive"], a["n_negative"]) == (6, 10)
        assert tuple(a["interval"]) == auc_interval(a["value"], 6, 10)
        # selective risk: the 8 (9) adversarial images of lowest entropy hold 6 (7) errors
        order = np.argsort(adv_h, kind="mergesort")
        for cov, k in (("0.8", 8), ("0.9", 9)):
            errors = int((~ok_adv[order[:k]]).sum())
            _check(block["selective_risk"][cov], errors, k)
        assert [block["selective_risk"][c]["k"] for c in ("0.8", "0.9")] == [6, 7]


def test_a_stochastic_model_is_scored_from_its_draws_as_the_detector_was_fitted(  # type: ignore[no-untyped-def]
    tmp_path: Path, write_adaptive, adaptive_case
) -> None:
    case = adaptive_case

    def mi(p: np.ndarray) -> np.ndarray:
        """Mutual information of draws (S, N, C) by its textbook formula, in float64."""
        q = p.astype(np.float64)

        def h(x: np.ndarray) -> np.ndarray:
            return -(x * np.log(x)).sum(-1)

        return h(q.mean(0)) - h(q).mean(0)

    clean_mi = mi(case.fields("adaptive", True)["clean_sample_probs"])
    top = np.sort(clean_mi)[::-1]
    tau = float((top[2] + top[3]) / 2)  # the three most uncertain clean images are rejected
    det = {**case.DETECTOR, "score": "mutual_information", "threshold": tau, "samples": 2}
    folders = write_adaptive(tmp_path, "vib", detectors=[det, det], score="mutual_information", draws=True)
    rows = attack_rows(tuple(folders), ReportSettings())
    assert rows[0]["name"] == "adaptive-linf-eps0.03-s4-mi"
    b = rows[0]["adaptive"]
    assert b["score"] == "mutual_information" and b["non_adaptive"]["name"] == "pgd-linf-eps0.03-s4"
    rej_clean = clean_mi > tau
    ok_clean = np.ones(10, bool)
    ok_clean[list(case.CLEAN_WRONG)] = False
    _check(b["clean"]["fpr"], 3, 10)
    _check(b["clean"]["selective_accuracy"], int((ok_clean & ~rej_clean).sum()), 7)
    ok_adv = np.ones(10, bool)
    ok_adv[list(case.ADV_WRONG)] = False
    success = ok_clean & ~ok_adv
    for kind, block in (("pgd", b["non_adaptive"]), ("adaptive", b["adaptive"])):
        adv_mi = mi(case.fields(kind, True)["adv_sample_probs"])
        rej = adv_mi > tau
        _check(block["tpr_at_threshold"], int((rej & success).sum()), 6)
        _check(block["system_accuracy"], int((ok_adv | rej).sum()), 10)
        assert block["detection_auroc"]["value"] == pytest.approx(_pairwise_auc(clean_mi, adv_mi[success]))


def test_the_table_sets_both_attackers_side_by_side_and_a_missing_counterpart_is_a_dash(  # type: ignore[no-untyped-def]
    stored, add_adaptive
) -> None:
    add_adaptive(stored, "linear")
    (alone,) = [r for r in add_adaptive(stored, "attention", counterpart=False) if "adaptive" in r]
    assert alone["adaptive"]["non_adaptive"] is None
    assert alone["adaptive"]["non_adaptive_attack"] == "pgd-linf-eps0.03-s4"
    results = load_results(stored.evaluations)
    t = tables.adaptive(results, (0.8, 0.9))
    assert t is not None and t.key == "adaptive"
    assert t.title == "Uncertainty detection against a non-adaptive and an adaptive attacker"
    assert t.columns[-2:] == ["selective risk@80% adaptive", "selective risk@90% adaptive"]
    assert [r[:4] for r in t.rows] == [
        ["aptos", "resnet50 linear", "predictive entropy", "adaptive-linf-eps0.03-s4-entropy"],
        ["aptos", "resnet50 attention", "predictive entropy", "adaptive-linf-eps0.03-s4-entropy"],
    ]

    def cell(row: int, col: str) -> Cell:
        v = t.rows[row][t.columns.index(col)]
        assert isinstance(v, Cell), v
        return v

    assert cell(0, "threshold τ").value == 0.5 and cell(0, "val FPR").value == 0.05
    assert cell(0, "clean accuracy").value == 0.8 and cell(0, "coverage").value == 0.7
    assert cell(0, "AUROC non-adaptive").value == pytest.approx(0.8)
    assert cell(0, "AUROC adaptive").value == pytest.approx(26 / 60)
    assert (cell(0, "AUROC adaptive").lo, cell(0, "AUROC adaptive").hi) == auc_interval(26 / 60, 6, 10)
    assert cell(0, "TPR@τ non-adaptive").value == pytest.approx(5 / 6)
    assert cell(0, "TPR@τ adaptive").value == pytest.approx(1 / 6)
    sys_adv = cell(0, "system robust accuracy adaptive")
    assert cell(0, "system robust accuracy non-adaptive").value == 0.8 and sys_adv.value == 0.4
    assert (sys_adv.lo, sys_adv.hi) == wilson_interval(4, 10)
    assert cell(0, "selective risk@80% adaptive").value == 0.75
    assert cell(0, "selective risk@90% adaptive").value == pytest.approx(7 / 9)
    # 0.8 under PGD lies above the adaptive interval's top: flagged, on that cell alone
    col = t.columns.index("system robust accuracy adaptive")
    assert list(t.flags) == [(0, col)] and "overstates" in t.flags[(0, col)][0]
    # no counterpart: its cells print as a dash, the adaptive side is there
    for name in ("AUROC non-adaptive", "TPR@τ non-adaptive", "system robust accuracy non-adaptive"):
        assert cell(1, name).value is None and cell(1, name).text() == "–"
    assert cell(1, "system robust accuracy adaptive").value == 0.4
    assert "| – |" in t.markdown()
    assert "adaptive" in [x.key for x in tables.all_tables(results, 0.05, (0.8, 0.9))]


def test_a_set_without_one_detector_on_every_shard_is_an_error_naming_set_and_shard(  # type: ignore[no-untyped-def]
    tmp_path: Path, write_adaptive, adaptive_case
) -> None:
    DETECTOR = adaptive_case.DETECTOR
    cases = [
        ("other", [DETECTOR, {**DETECTOR, "threshold": 0.4}], r"records another detector than 000000-000005\.h5 "
                                                             r"\(threshold differ\)"),
        ("none", [DETECTOR, None], r"records no detector \(meta key 'detector'\)"),
        ("draws", [{**DETECTOR, "samples": 12}] * 2, "0 draws per image stored, but the detector scored 12"),
        ("bad", [{**DETECTOR, "score": "nope"}] * 2, "score must be one of"),
    ]  # fmt: skip
    for name, dets, message in cases:
        (folder,) = write_adaptive(tmp_path, name, counterpart=False, detectors=dets)
        with pytest.raises(ReportError, match=re.escape(f"shard set {folder}") + ".*" + message):
            attack_rows((folder,), ReportSettings())
    folder = str(tmp_path / "shards" / "none" / "adaptive-linf-eps0.03-s4-entropy")
    with pytest.raises(ReportError, match=r"shard 000005-000010\.h5 records no detector"):  # the shard at fault
        attack_rows((folder,), ReportSettings())


def test_the_report_gains_the_adaptive_table_and_figure(stored, add_adaptive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_adaptive(stored, "linear")
    add_adaptive(stored, "vib-0.1", counterpart=False)
    out = tmp_path / "report"
    summary = build_report(stored.evaluations, out, name="fixture")
    assert "adaptive" in summary["tables"] and "figures/adaptive-aptos.png" in summary["figures"]
    data = (out / "figures" / "adaptive-aptos.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    for ext in ("md", "csv", "tex", "json"):
        assert (out / "tables" / f"adaptive.{ext}").stat().st_size > 100
    page = (out / "index.html").read_text()
    assert "figures/adaptive-aptos.png" in page
    assert "Uncertainty detection against a non-adaptive and an adaptive attacker" in page
    index = (out / "index.md").read_text()
    assert "### Uncertainty detection against a non-adaptive and an adaptive attacker" in index
    assert "](figures/adaptive-aptos.png)" in index
    assert math.isclose(float(next(r for r in _csv_rows(out) if r["model"] == "resnet50 linear")
                              ["system robust accuracy adaptive"]), 0.4)  # fmt: skip


def _csv_rows(out: Path) -> list[dict[str, str]]:
    import csv

    with (out / "tables" / "adaptive.csv").open() as fh:
        return list(csv.DictReader(fh))
