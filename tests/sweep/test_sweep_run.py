"""A tiny sweep runs end to end in this process; a rerun does nothing; shards verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from medhpc.store import verify_dir
from medhpc.sweep import load_sweep
from medhpc.sweep.run import run_in_process, status

ROOT = Path(__file__).resolve().parents[2]


def tiny_sweep(tmp_path: Path) -> Path:
    cfg = {
        "name": "tiny",
        "datasets": [{"name": "aptos", "kind": "aptos", "root": "synthetic", "size": 32,
                      "synthetic": {"n": 80, "size": 32}}],  # fmt: skip
        "models": {"archs": ["resnet50"], "heads": ["linear", "vib"], "vib": {"latent": 16, "eval_samples": 2}},
        "train": {"optim": {"name": "adam", "lr": 1e-3}, "epochs": 1, "patience": None},
        "vib_train": {"epochs": 1, "patience": None},
        "attacks": [{"attack": "none"}, {"attack": "fgsm", "eps": 0.05}],
        "limit": 6,
        "shard_size": 4,
        "out": str(tmp_path / "out"),
        "executor": "debug",
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_sweep_runs_end_to_end_and_reruns_as_a_no_op(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path)
    cfg = load_sweep(path)
    run_in_process(cfg)
    counts = status(cfg)
    assert counts == {
        "prepare": {"done": 1, "total": 1},
        "train": {"done": 2, "total": 2},
        "attack": {"done": 8, "total": 8},  # 2 models x 2 attacks x 2 shards (4 + 2 images)
        "evaluate": {"done": 2, "total": 2},
        "report": {"done": 1, "total": 1},
    }
    out = Path(cfg.out)
    assert verify_dir(out / "shards").ok
    report = json.loads((out / "report" / "summary.json").read_text())
    assert {m["head"] for m in report["models"]} == {"linear", "vib"}
    for model in report["models"]:
        rows = {r["config"]["attack"]: r for r in model["attacks"]}
        # true labels: the clean row's "success" is the model's error rate
        assert rows["none"]["n"] == 6
        assert rows["none"]["success_rate"] + rows["none"]["accuracy"] == 1.0
        assert rows["none"]["mean_linf"] == 0.0 and 0 < rows["fgsm"]["mean_linf"] <= 0.05 + 1e-6
    assert (out / "report" / "summary.md").read_text().startswith("| model |")

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = subprocess.run([sys.executable, "-m", "medhpc.sweep", "run", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "attack        8 / 8     done" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def test_executors_not_built_yet_are_refused_by_name(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "medhpc.sweep", "run", str(path), "--executor", "local"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "executor 'local' is not available yet" in proc.stderr
    assert not (tmp_path / "out").exists()
