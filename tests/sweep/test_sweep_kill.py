"""Reliability: SIGKILL the sweep driver and its jobs at several points, rerun, and get the
results of an uninterrupted run, with every shard verifying."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from medhpc.store import verify_dir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def write_sweep(tmp_path: Path, name: str) -> Path:
    cfg = {
        "name": "kill",
        "datasets": [{"name": "aptos", "kind": "aptos", "root": "synthetic", "size": 32,
                      "synthetic": {"n": 80, "size": 32}}],  # fmt: skip
        "models": {"archs": ["resnet50"], "heads": ["linear", "vib"], "vib": {"latent": 16, "eval_samples": 2}},
        "train": {"optim": {"name": "adam", "lr": 1e-3}, "epochs": 2, "batch_size": 8, "patience": None},
        "vib_train": {"epochs": 1, "patience": None},
        "attacks": [{"attack": "none"}, {"attack": "pgd", "eps": 0.05, "steps": 3}],
        "limit": 8,
        "shard_size": 4,
        "out": str(tmp_path / name),
        "executor": "local",
        "workers": 2,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(cfg: Path) -> subprocess.Popen:
    # Own session: killing the group kills the driver and every job it started.
    return subprocess.Popen([sys.executable, "-m", "medhpc.sweep", "run", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before {what}: {proc.communicate()[0][-2000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def finish(cfg: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "medhpc.sweep", "run", str(cfg)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def results(out: Path) -> list[dict]:
    """The report without paths: per model, clean test metrics and every attack row."""
    summary = json.loads((out / "report" / "summary.json").read_text())
    rows = []
    for m in summary["models"]:
        attacks = [{k: v for k, v in r.items() if k != "shards"} for r in m["attacks"]]
        # Run names hash the cache path, which differs between the two output folders.
        rows.append({"model": (m["arch"], m["head"]), "clean": m["clean_test"], "attacks": attacks})
    return sorted(rows, key=lambda r: r["model"])


def test_sigkill_at_several_points_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    pytest.importorskip("submitit", reason="submitit not installed (a test extra, requirements-pinned.txt)")
    whole = write_sweep(tmp_path, "whole")
    finish(whole)
    expected = results(tmp_path / "whole")

    cfg = write_sweep(tmp_path, "killed")
    out = tmp_path / "killed"
    points: list[tuple[str, Callable[[], bool]]] = [
        ("the synthetic data being written", lambda: any((out / "data").rglob("*.png"))),
        ("the first training checkpoint", lambda: any((out / "runs").glob("*/last.pt"))),
        ("the first attack shard", lambda: any((out / "shards").rglob("*.h5"))),
    ]
    for what, ready in points:
        kill_when(start(cfg), ready, what)
    finish(cfg)

    report = verify_dir(out / "shards")
    assert report.ok, report.lines()
    assert results(out) == expected
