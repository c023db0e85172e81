"""A tiny sweep runs end to end in this process; a rerun does nothing; shards verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

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
    # attack: 2 models x 2 attacks x 2 shards
    totals = {"prepare": 1, "train": 2, "attack": 8, "evaluate": 2, "report": 1}
    assert counts == {k: {"done": n, "running": 0, "queued": 0, "failed": 0, "total": n} for k, n in totals.items()}
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
    # `tensorboard --logdir OUT/runs` lists every training run under its folder's name.
    mux = EventMultiplexer().AddRunsFromDirectory(str(out / "runs"))
    mux.Reload()
    runs = {p.parent.name for p in (out / "runs").glob("*/metrics.json")}
    assert len(runs) == 2 and set(mux.Runs()) == runs
    assert all("loss/val" in tags["scalars"] for tags in mux.Runs().values())

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = subprocess.run([sys.executable, "-m", "medhpc.sweep", "run", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "attack        8 / 8     done" in proc.stdout and "FAILED" not in proc.stdout, proc.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps

    rep = subprocess.run([sys.executable, "-m", "medhpc.sweep", "report", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout.startswith("| model | none | fgsm-linf-eps0.05 |") and "resnet50-vib-" in rep.stdout


def test_local_executor_runs_the_sweep_in_subprocesses_and_reports_a_failure(tmp_path: Path) -> None:
    """submitit's local executor, two workers; a job that fails is listed with its log and
    blocks only what depends on it."""
    pytest.importorskip("submitit", reason="submitit not installed (a test extra, requirements-pinned.txt)")
    from medhpc.sweep.launch import run_submitit

    path = tiny_sweep(tmp_path)
    data = yaml.safe_load(path.read_text())
    data.update(executor="local", workers=2)
    # A second dataset whose root does not exist: its prepare job fails, its models are blocked.
    data["datasets"].append({"name": "missing", "kind": "cxr", "root": str(tmp_path / "nope"), "size": 32})
    path.write_text(yaml.safe_dump(data))
    cfg = load_sweep(path)
    result = run_submitit(cfg, poll_s=0.2, deadline_s=900)
    assert len(result["failed"]) == 1
    (key, info), = result["failed"].items()
    assert key.startswith("prepare-") and "nope" in info["error"] and Path(info["stderr"]).is_file()
    assert len(result["blocked"]) == 2  # the missing dataset's linear and VIB models
    counts = status(cfg)
    assert counts["attack"]["done"] == counts["attack"]["total"] == 8
    assert counts["prepare"] == {"done": 1, "running": 0, "queued": 0, "failed": 1, "total": 2}

    proc = subprocess.run([sys.executable, "-m", "medhpc.sweep", "status", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1
    assert f"FAILED {key}" in proc.stdout and info["stderr"] in proc.stdout
