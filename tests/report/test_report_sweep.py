"""The report of a real sweep, the demo's (``demo_sweep``, tests/conftest.py: trained linear,
attention and VIB models attacked), rewritten by ``python -m medhpc.sweep report``; its tables
checked against numbers recomputed here by hand from the shards, and every figure produced."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medhpc.metrics import roc_auc
from medhpc.store import ShardReader
from medhpc.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "medhpc" / "configs" / "sweep-demo.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _mi(p: np.ndarray) -> np.ndarray:
    """Mutual information by its textbook formula, independent of medhpc.report. In float64: the
    demo's stored float32 probabilities hold exact zeros, and 1e-300 is 0 in float32."""
    p = p.astype(np.float64)

    def h(q: np.ndarray) -> np.ndarray:
        return -(q * np.log(np.clip(q, 1e-300, None))).sum(-1)

    return np.maximum(h(p.mean(0)) - h(p).mean(0), 0)


def test_sweep_report_tables_match_the_shards_and_every_figure_exists(demo_sweep: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "medhpc.sweep", "report", str(DEMO_CONFIG), "--set",
                           f"out={demo_sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = demo_sweep
    report = out / "report"
    assert f"report: {report / 'index.html'} (also {report / 'index.md'})" in proc.stdout
    summary = json.loads((report / "summary.json").read_text())
    models = {m["run"]: m for m in summary["models"]}
    assert sorted((m["head"], m["beta"]) for m in models.values()) == [
        ("attention", None), ("linear", None), ("vib", 0.001), ("vib", 0.1)]

    # Appendix B: every cell is the share of adversarial predictions equal to the labels
    rows = _csv(report / "tables" / "appendix-b-aptos.csv")
    labels = {m["run"]: f"resnet50 {m['head']}" + (f" β={m['beta']:g}" if m["beta"] else "") for m in models.values()}
    for run in models:
        for row in rows:
            folder = next((r["shards"] for r in models[run]["attacks"] if r["name"] == row["attack"]), None)
            if folder is None:  # a row only stochastic heads get (EOT, mutual information): blank here
                assert row[labels[run]] == "" and models[run]["head"] != "vib", (run, row["attack"])
                continue
            f = ShardReader(folder).read(["labels", "adv_pred"])
            assert float(row[labels[run]]) == pytest.approx(np.mean(f["adv_pred"] == f["labels"]))

    # Detection: the VIB model's mutual-information AUROC, recomputed from the stored draws
    det = _csv(report / "tables" / "detection.csv")
    vib = next(r for r in models if models[r]["beta"] == 0.001)
    folder = next(r["shards"] for r in models[vib]["attacks"] if r["name"] == "fgsm-linf-eps0.01")
    f = ShardReader(folder).read(["clean_sample_probs", "adv_sample_probs", "success"])
    mi_c, mi_a = _mi(f["clean_sample_probs"]), _mi(f["adv_sample_probs"])
    n = len(mi_c)
    want = roc_auc(np.r_[np.zeros(n), np.ones(n)], np.r_[mi_c, mi_a])
    (got,) = [r for r in det if r["model"] == labels[vib] and r["attack"] == "fgsm-linf-eps0.01"
              and r["measure"] == "mutual information"]  # fmt: skip
    assert float(got["AUROC (all)"]) == pytest.approx(want)
    assert int(got["successful"]) == int(f["success"].sum())

    # every figure: two curves per model, the two grids, the worst case, Grad-CAM for all and
    # the attention maps of the attentive model; nothing else
    figs = set(summary["figures"])
    names = [Path(r).name for r in models]
    expected = {f"figures/{kind}-{n}.png" for n in names for kind in ("risk-coverage", "roc", "gradcam")}
    expected |= {f"figures/attention-{n}.png" for n in names if "-attention-" in n}
    expected |= {"figures/acc-vs-beta-aptos-resnet50-none.png", "figures/acc-vs-eps-aptos-resnet50-none.png",
                 "figures/worst-case-aptos.png", "figures/adaptive-aptos.png"}  # fmt: skip
    assert figs == expected
    for rel in figs:
        assert (report / rel).read_bytes()[:4] == b"\x89PNG", rel

    # maps were scored against the synthetic lesion masks (positives have lesions)
    ev = json.loads((out / "eval" / f"{Path(vib).name}.json").read_text())
    assert ev["maps"]["n"] == 64 and ev["maps"]["kinds"] == ["gradcam"]
    fgsm = next(r for r in ev["attacks"] if r["name"] == "fgsm-linf-eps0.01")
    assert set(fgsm["maps"]["gradcam"]) == {"adversarial", "shift"}
    with np.load(out / "eval" / ev["maps"]["file"]) as z:
        attacks = list(z["attacks"])
        k = len(attacks)  # every perturbing attack, figure_images (4) images each
        assert k == sum(r["config"]["attack"] != "none" for r in ev["attacks"])
        assert z["gradcam_clean"].shape[0] == 4 and z["gradcam_adv"].shape[:2] == (k, 4)
        assert z["images"].shape == (4, 32, 32, 3) and z["masks"].any()  # lesion images drawn first
        # the gallery's data: each FGSM's perturbation peaks at its ε, and its images lie within it
        assert z["adv_images"].shape == (k, 4, 32, 32, 3) and z["perturbation"].shape == (k, 4, 32, 32, 3)
        clean_images = z["images"].astype(np.int64)
        for eps in (0.0025, 0.005, 0.01):
            i = attacks.index(f"fgsm-linf-eps{eps:g}")
            assert np.abs(z["perturbation"][i].astype(np.float64)).max() == pytest.approx(eps, rel=0.02)
            assert np.abs(z["adv_images"][i].astype(np.int64) - clean_images).max() <= round(eps * 255) + 1
        assert (z["clean_conf"] >= 0.5).all() and (z["adv_conf"] >= 0.5).all()  # the predicted class of two


def test_finished_evaluations_are_skipped_until_the_report_settings_change(demo_sweep: Path) -> None:
    from medhpc.sweep.jobs import is_done
    from medhpc.sweep.run import full_graph

    graph = full_graph(load_sweep(DEMO_CONFIG, {"out": str(demo_sweep)}))
    evals = [graph.jobs[k] for k in graph.by_kind("evaluate") + graph.by_kind("report")]
    assert len(evals) == 5 and all(is_done(j) for j in evals)
    changed = full_graph(load_sweep(DEMO_CONFIG, {"out": str(demo_sweep), "report.grid": 5}))
    assert not any(is_done(changed.jobs[k]) for k in changed.by_kind("evaluate") + changed.by_kind("report"))
    assert all(is_done(changed.jobs[k]) for k in changed.by_kind("attack"))  # the shards stand

    # an evaluation redone (new shards, other settings) makes the report stale
    (report,) = [graph.jobs[k] for k in graph.by_kind("report")]
    ev = Path(report.evaluations[0])
    original = ev.read_text()
    ev.write_text(json.dumps({**json.loads(original), "job": "evaluate-000000000000"}))
    try:
        assert not is_done(report)
        # and one redone under the same job name (a newer evaluation format) does too
        ev.write_text(json.dumps({**json.loads(original), "redone": True}))
        assert not is_done(report)
    finally:
        ev.write_text(original)
    assert is_done(report)
