"""The report of a real (tiny) sweep: trained linear, attention and VIB models attacked, then
``python -m medhpc.sweep report``; its tables checked against numbers recomputed here by hand
from the shards, and every figure produced."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from medhpc.metrics import roc_auc
from medhpc.store import ShardReader
from medhpc.sweep import load_sweep
from medhpc.sweep.run import run_in_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report-sweep")
    cfg = {
        "name": "tiny-report",
        "datasets": [{"name": "aptos", "kind": "aptos", "root": "synthetic", "size": 64,
                      "synthetic": {"n": 60, "size": 64}}],  # fmt: skip
        "models": {"archs": ["resnet50"], "heads": ["linear", "attention", "vib"], "betas": [1e-3, 1e-1],
                   "vib": {"latent": 16, "eval_samples": 3}},  # fmt: skip
        "train": {"optim": {"name": "adam", "lr": 1e-3}, "epochs": 1, "patience": None},
        "vib_train": {"epochs": 1, "patience": None},
        "attacks": [{"attack": "none"}, {"attack": "fgsm", "eps": 0.02}, {"attack": "fgsm", "eps": 0.05}],
        "limit": 8,
        "shard_size": 8,
        "report": {"map_images": 6, "figure_images": 2, "grid": 4},
        "out": str(tmp / "out"),
        "executor": "debug",
    }
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_in_process(load_sweep(path))
    return path


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _mi(p: np.ndarray) -> np.ndarray:
    """Mutual information by its textbook formula, independent of medhpc.report."""
    def h(q: np.ndarray) -> np.ndarray:
        return -(q * np.log(np.clip(q, 1e-300, None))).sum(-1)

    return np.maximum(h(p.mean(0)) - h(p).mean(0), 0)


@pytest.mark.slow
def test_sweep_report_tables_match_the_shards_and_every_figure_exists(sweep: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "medhpc.sweep", "report", str(sweep)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = Path(yaml.safe_load(sweep.read_text())["out"])
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
            folder = next(r["shards"] for r in models[run]["attacks"] if r["name"] == row["attack"])
            f = ShardReader(folder).read(["labels", "adv_pred"])
            assert float(row[labels[run]]) == pytest.approx(np.mean(f["adv_pred"] == f["labels"]))

    # Detection: the VIB model's mutual-information AUROC, recomputed from the stored draws
    det = _csv(report / "tables" / "detection.csv")
    vib = next(r for r in models if models[r]["beta"] == 0.001)
    folder = next(r["shards"] for r in models[vib]["attacks"] if r["name"] == "fgsm-linf-eps0.05")
    f = ShardReader(folder).read(["clean_sample_probs", "adv_sample_probs", "success"])
    mi_c, mi_a = _mi(f["clean_sample_probs"]), _mi(f["adv_sample_probs"])
    want = roc_auc(np.r_[np.zeros(8), np.ones(8)], np.r_[mi_c, mi_a])
    (got,) = [r for r in det if r["model"] == labels[vib] and r["attack"] == "fgsm-linf-eps0.05"
              and r["measure"] == "mutual information"]  # fmt: skip
    assert float(got["AUROC (all)"]) == pytest.approx(want)
    assert int(got["successful"]) == int(f["success"].sum())

    # every figure: two curves per model, the two grids, Grad-CAM for all and attention maps
    figs = set(summary["figures"])
    names = [Path(r).name for r in models]
    assert {f"figures/risk-coverage-{n}.png" for n in names} | {f"figures/roc-{n}.png" for n in names} <= figs
    assert {f"figures/gradcam-{n}.png" for n in names} <= figs
    assert [p for p in figs if p.startswith("figures/attention-")] == [
        f"figures/attention-{n}.png" for n in names if "-attention-" in n]
    assert {"figures/acc-vs-beta-aptos-resnet50-none.png", "figures/acc-vs-eps-aptos-resnet50-none.png"} <= figs
    assert len(figs) == 4 * 3 + 1 + 2
    for rel in figs:
        assert (report / rel).read_bytes()[:4] == b"\x89PNG", rel

    # maps were scored against the synthetic lesion masks (positives have lesions)
    ev = json.loads((out / "eval" / f"{Path(vib).name}.json").read_text())
    assert ev["maps"]["n"] == 6 and ev["maps"]["kinds"] == ["gradcam"]
    fgsm = next(r for r in ev["attacks"] if r["name"] == "fgsm-linf-eps0.05")
    assert set(fgsm["maps"]["gradcam"]) == {"adversarial", "shift"}
    with np.load(out / "eval" / ev["maps"]["file"]) as z:
        assert z["gradcam_clean"].shape == (2, 2, 2) and z["gradcam_adv"].shape == (2, 2, 2, 2)
        assert z["images"].shape == (2, 64, 64, 3) and z["masks"].any()  # lesion images drawn first
        # the gallery's data: the adversarial images and what the attack added, per attack (ε 0.02, 0.05)
        assert z["adv_images"].shape == (2, 2, 64, 64, 3) and z["perturbation"].shape == (2, 2, 64, 64, 3)
        peak = np.abs(z["perturbation"].astype(np.float64)).max(axis=(1, 2, 3, 4))
        assert peak == pytest.approx([0.02, 0.05], abs=1e-3)
        clean_images = z["images"].astype(np.int64)
        assert np.abs(z["adv_images"][1].astype(np.int64) - clean_images).max() <= round(0.05 * 255) + 1
        assert (z["clean_conf"] >= 0.5).all() and (z["adv_conf"] >= 0.5).all()  # the predicted class of two


@pytest.mark.slow
def test_finished_evaluations_are_skipped_until_the_report_settings_change(sweep: Path) -> None:
    from medhpc.sweep.jobs import is_done
    from medhpc.sweep.run import full_graph

    graph = full_graph(load_sweep(sweep))
    evals = [graph.jobs[k] for k in graph.by_kind("evaluate") + graph.by_kind("report")]
    assert len(evals) == 5 and all(is_done(j) for j in evals)
    changed = full_graph(load_sweep(sweep, {"report.grid": 5}))
    assert not any(is_done(changed.jobs[k]) for k in changed.by_kind("evaluate") + changed.by_kind("report"))
    assert all(is_done(changed.jobs[k]) for k in changed.by_kind("attack"))  # the shards stand

    # an evaluation redone (new shards, other settings) makes the report stale
    (report,) = [graph.jobs[k] for k in graph.by_kind("report")]
    ev = Path(report.evaluations[0])
    original = ev.read_text()
    ev.write_text(json.dumps({**json.loads(original), "job": "evaluate-000000000000"}))
    try:
        assert not is_done(report)
    finally:
        ev.write_text(original)
    assert is_done(report)
