"""The report's tables against hand-computed values on the stored fixture (conftest.py)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from medhpc.metrics import auc_interval, wilson_interval
from medhpc.report import tables
from medhpc.report.results import load_results
from medhpc.report.table import Cell, Table, latex_escape


def _cell(t: Table, row: int, col: str) -> Cell:
    v = t.rows[row][t.columns.index(col)]
    assert isinstance(v, Cell), v
    return v


def test_appendix_a_metrics_with_intervals(stored) -> None:  # type: ignore[no-untyped-def]
    results = load_results(stored.evaluations)
    assert [m.label for m in results] == ["resnet50 linear", "resnet50 attention", "resnet50 vib β=0.001",
                                          "resnet50 vib β=0.1"]  # fmt: skip
    t = tables.appendix_a(results)
    # linear: tp 7, fp 2, fn 3, tn 8 of 20
    acc = _cell(t, 0, "accuracy")
    assert acc.value == 15 / 20 and (acc.lo, acc.hi) == wilson_interval(15, 20)
    assert _cell(t, 0, "precision").value == 7 / 9 and (
        _cell(t, 0, "precision").lo,
        _cell(t, 0, "precision").hi,
    ) == wilson_interval(7, 9)
    assert _cell(t, 0, "recall").value == 7 / 10 and _cell(t, 0, "specificity").value == 8 / 10
    auc = _cell(t, 0, "ROC-AUC")
    assert auc.value == 0.8 and (auc.lo, auc.hi) == auc_interval(0.8, 10, 10)
    assert t.rows[0][:3] == ["aptos", "resnet50 linear", 20]
    assert "0.750 [" in t.markdown().splitlines()[4]


def test_appendix_b_is_attack_by_model_accuracy(stored) -> None:  # type: ignore[no-untyped-def]
    (t,) = tables.appendix_b(load_results(stored.evaluations))
    assert t.key == "appendix-b-aptos"
    assert t.columns == [
        "attack",
        "resnet50 linear",
        "resnet50 attention",
        "resnet50 vib β=0.001",
        "resnet50 vib β=0.1",
    ]
    assert [r[0] for r in t.rows] == ["none", "fgsm-linf-eps0.01", "fgsm-linf-eps0.02", "pgd-linf-eps0.02-s5"]
    c = _cell(t, 2, "resnet50 linear")  # fgsm 0.02 on linear: 2 of 8
    assert c.value == 0.25 and (c.lo, c.hi) == wilson_interval(2, 8)
    assert _cell(t, 3, "resnet50 vib β=0.1").value == 3 / 8
    assert _cell(t, 3, "resnet50 linear").lo == 0.0  # 0 of 8: Wilson is exact at the edge


def test_appendix_c_is_attack_by_beta_with_the_base_model(stored) -> None:  # type: ignore[no-untyped-def]
    (t,) = tables.appendix_c(load_results(stored.evaluations))
    assert t.key == "appendix-c-aptos-resnet50"
    assert t.columns == ["attack", "base (linear)", "β=0.001", "β=0.1"]
    assert [_cell(t, 3, c).value for c in t.columns[1:]] == [0 / 8, 2 / 8, 3 / 8]


def test_wasserman_absolute_and_relative_change(stored) -> None:  # type: ignore[no-untyped-def]
    t = tables.wasserman(load_results(stored.evaluations))
    assert t is not None
    rows = {r[2]: r for r in t.rows}
    fgsm = rows["fgsm-linf-eps0.02"]  # vanilla 2/8, attentive 4/8
    assert fgsm[3].value == 0.25 and fgsm[4].value == 0.5
    assert fgsm[5].value == pytest.approx(25.0) and fgsm[6].value == pytest.approx(100.0)
    assert fgsm[5].text() == "25.0 pp" and fgsm[6].text() == "100.0 %"
    pgd = rows["pgd-linf-eps0.02-s5"]  # vanilla 0/8: relative change undefined
    assert pgd[5].value == pytest.approx(25.0) and pgd[6].value is None and pgd[6].text() == "–"
    assert rows["none"][5].value == 0.0


def test_uncertainty_and_map_tables_carry_the_stored_numbers(stored) -> None:  # type: ignore[no-untyped-def]
    results = load_results(stored.evaluations)
    det = tables.detection(results, 0.05)
    # deterministic models: predictive entropy only; VIB: four measures; attack none: no row
    per_model = {m.label: sum(1 for r in det.rows if r[1] == m.label) for m in results}
    assert per_model == {"resnet50 linear": 3, "resnet50 attention": 3, "resnet50 vib β=0.001": 12,
                         "resnet50 vib β=0.1": 12}  # fmt: skip
    vib = results[2]
    row = next(
        r for r in det.rows if r[1] == vib.label and r[2] == "fgsm-linf-eps0.02" and r[3] == "mutual information"
    )
    d = vib.attack("fgsm-linf-eps0.02")["uncertainty"]["detection"]["mutual_information"]  # type: ignore[index]
    assert row[4].value == d["all"]["auroc"] and row[5].value == d["successful"]["auroc"]
    assert (row[4].lo, row[4].hi) == auc_interval(d["all"]["auroc"], 8, 8)
    sel = tables.selective(results, (0.8, 0.9))
    assert "clean acc@80%" in sel.columns and "mixed AURC" in sel.columns
    assert len(sel.rows) == 4 + 4 + 8 + 8  # 4 attacks; VIB ranked by entropy and by mutual information
    mp = tables.maps(results)
    assert mp is not None and len(mp.rows) == 3 * (2 + 1 + 1)  # 3 attacks x (attention: 2 maps; 2 VIBs: Grad-CAM)
    r = mp.rows[0]
    assert r[4].value == 0.5 and (r[4].lo, r[4].hi) == wilson_interval(2, 4) and r[5].value == 0.25
    assert r[8].value == 0.5 and r[10] == 4


def test_csv_keeps_intervals_as_numbers_and_latex_escapes() -> None:
    t = Table("t", "A_b & c", ["name", "acc"], note="50 % of β")
    t.add(["x_1", Cell(0.5, 0.25, 0.75)])
    t.add(["y", Cell(None)])
    rows = list(csv.reader(io.StringIO(t.csv())))
    assert rows == [["name", "acc", "acc lo", "acc hi"], ["x_1", "0.5", "0.25", "0.75"], ["y", "", "", ""]]
    tex = t.latex()
    assert r"x\_1 & 0.500 [0.250, 0.750] \\" in tex and r"\caption{A\_b \& c. 50 \% of $\beta$}" in tex
    assert r"\begin{tabular}{lr}" in tex and "\\toprule" in tex
    assert latex_escape("ε_1") == r"$\varepsilon$\_1"
    md = t.markdown()
    assert "| x_1 | 0.500 [0.250, 0.750] |" in md and "| y | – |" in md
    with pytest.raises(ValueError, match="2 columns"):
        t.add(["only one"])


def test_the_worst_case_table_sets_the_strongest_single_attack_beside_the_ensemble(stored, add_worst_case) -> None:  # type: ignore[no-untyped-def]
    add_worst_case(stored)
    results = load_results(stored.evaluations)
    t = tables.worst_case(results)
    assert t is not None and len(t.rows) == 4
    # linear: FGSM 0.02 leaves 2 of 8, PGD 0 of 8 -> PGD is the strongest single attack; worst case 0
    row = t.rows[0]
    assert row[:4] == ["aptos", "resnet50 linear", "0.02 (linf)", "pgd-linf-eps0.02-s5"]
    assert _cell(t, 0, "its accuracy").value == 0.0 and _cell(t, 0, "worst case").value == 0.0
    assert _cell(t, 0, "gap").value == 0.0 and row[7] == "fgsm-linf-eps0.02 3, pgd-linf-eps0.02-s5 3, none 2"
    # vib β=0.1: FGSM 4 of 8, PGD 3 of 8, worst case 0 of 8: a gap of 37.5 points, above the interval
    assert _cell(t, 3, "gap").value == pytest.approx(37.5)
    worst = _cell(t, 3, "worst case")
    assert (worst.lo, worst.hi) == wilson_interval(0, 8) and 3 / 8 > worst.hi
    assert list(t.flags) == [(3, 6)] and "overstates robustness" in t.flags[(3, 6)][0]
    # attention: PGD 2 of 8 against 1 of 8, inside the interval: not flagged
    assert _cell(t, 1, "gap").value == pytest.approx(12.5)
    # and Appendix B gains the worst-case row
    (b,) = tables.appendix_b(results)
    assert b.rows[-1][0] == "worst_case-linf-eps0.02-eot20-fgsm+pgd"
    assert t.key in [x.key for x in tables.all_tables(results, 0.05, (0.8,))]


def test_without_a_worst_case_row_there_is_no_worst_case_table(stored) -> None:  # type: ignore[no-untyped-def]
    assert tables.worst_case(load_results(stored.evaluations)) is None


def _copy_model(stored: Any, key: str, name: str, model: dict[str, Any], extra: dict[str, Any],
                correct: list[int]) -> str:  # fmt: skip
    """Another stored model: the fixture's ``key`` evaluation under a new run, with ``correct``
    images (of 8) right under each attack."""
    import json

    import yaml

    src = json.loads(Path(stored.evaluations[list(stored.names).index(key)]).read_text())
    run = stored.root / "runs" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": model, "loss_weighting": "none", **extra}))
    old_run = Path(src["run"])
    (run / "metrics.json").write_text((old_run / "metrics.json").read_text())
    for row, k in zip(src["attacks"], correct, strict=True):
        row["accuracy"] = k / 8
    ev = stored.root / "eval" / f"{name}.json"
    ev.write_text(json.dumps({**src, "run": str(run), "maps": None}))
    return str(ev)


def test_the_wasserman_table_sets_vit_and_a_pgd_at_resnet50_beside_each_pair(stored) -> None:  # type: ignore[no-untyped-def]
    vit = _copy_model(stored, "linear", "vit_b_16-linear-000000000009", {"arch": "vit_b_16", "head": "linear"}, {},
                      [7, 6, 5, 4])  # fmt: skip
    at = _copy_model(stored, "linear", "resnet50-linear-pgdat-000000000010", {"arch": "resnet50", "head": "linear"},
                     {"adversarial": {"method": "pgd", "eps": 0.02, "steps": 10}}, [5, 5, 4, 4])  # fmt: skip
    results = load_results([*stored.evaluations, vit, at])
    labels = {m.label for m in results}
    assert "resnet50 linear, PGD-AT" in labels and "vit_b_16 linear" in labels
    defended = next(m for m in results if m.defence)
    assert defended.group == ("aptos", "resnet50", "PGD-AT") and defended.training == "PGD-AT"
    t = tables.wasserman(results)
    assert t is not None
    assert t.columns == ["dataset", "model", "attack", "vanilla", "attentive", "change", "relative change",
                         "resnet50 PGD-AT", "vit_b_16 linear"]  # fmt: skip
    rows = {r[2]: r for r in t.rows}
    assert {r[1] for r in t.rows} == {"resnet50"}  # one pair: the PGD-AT model has no attentive twin
    fgsm = rows["fgsm-linf-eps0.02"]
    assert (fgsm[3].value, fgsm[4].value, fgsm[7].value, fgsm[8].value) == (2 / 8, 4 / 8, 4 / 8, 5 / 8)
    assert rows["pgd-linf-eps0.02-s5"][7].value == 4 / 8
    # without those models the table keeps its seven columns
    assert len(tables.wasserman(load_results(stored.evaluations)).columns) == 7  # type: ignore[union-attr]
