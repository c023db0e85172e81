"""The sweep through submitit on the real one-node SLURM cluster: job arrays per stage, the
results of a local run, a failing job reported with its log, never a hang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medhpc.store import verify_dir
from medhpc.sweep import load_sweep
from medhpc.sweep.launch import run_submitit
from medhpc.sweep.run import status

pytest.importorskip("submitit", reason="submitit not installed (a test extra, requirements-pinned.txt)")

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_sweep_runs_as_slurm_job_arrays(slurm_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = {
        "name": "slurm",
        "datasets": [
            {"name": "aptos", "kind": "aptos", "root": "synthetic", "size": 32, "synthetic": {"n": 80, "size": 32}},
            {"name": "missing", "kind": "cxr", "root": str(tmp_path / "nope"), "size": 32},
        ],
        "models": {"archs": ["resnet50"], "heads": ["linear"]},
        "train": {"optim": {"name": "adam", "lr": 1e-3}, "epochs": 1, "patience": None},
        "attacks": [{"attack": "none"}, {"attack": "fgsm", "eps": 0.05}],
        "limit": 6,
        "shard_size": 4,
        "out": str(tmp_path / "out"),
        "executor": "slurm",
        "profile": str(ROOT / "slurm" / "profiles" / "local.toml"),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sweep = load_sweep(path)
    result = run_submitit(sweep, poll_s=0.5, deadline_s=600)

    (key, info), = result["failed"].items()  # the missing dataset, and nothing else
    assert key.startswith("prepare-") and "nope" in info["error"] and Path(info["stderr"]).is_file()
    assert len(result["blocked"]) == 1
    counts = status(sweep)
    assert counts["attack"] == {"done": 4, "running": 0, "queued": 0, "failed": 0, "total": 4}
    assert counts["evaluate"]["done"] == 1
    assert verify_dir(Path(sweep.out) / "shards").ok
    ev = json.loads(next((Path(sweep.out) / "eval").glob("*.json")).read_text())
    assert [r["config"]["attack"] for r in ev["attacks"]] == ["none", "fgsm"] and ev["n"] == 6
    # The attack shards ran as one SLURM job array (submitit names array tasks <id>_<i>).
    logs = {p.name.split("_")[0] for p in (Path(sweep.out) / "submitit" / "attack").glob("*_log.out")}
    assert len(logs) == 1


def test_a_preempted_training_job_is_requeued_and_resumes_from_last_pt(slurm_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from medhpc.sweep import expand
    from medhpc.sweep.cluster import load_profile, make_executor
    from medhpc.sweep.jobs import run_job
    from medhpc.sweep.launch import JobRunner

    cfg = {
        "name": "preempt",
        "datasets": [
            {"name": "aptos", "kind": "aptos", "root": "synthetic", "size": 32, "synthetic": {"n": 80, "size": 32}}
        ],
        "models": {"archs": ["resnet50"], "heads": ["linear"]},
        "train": {"optim": {"name": "adam", "lr": 1e-3}, "epochs": 5, "batch_size": 4, "patience": None},
        "attacks": [{"attack": "none"}],
        "out": str(tmp_path / "out"),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    graph = expand(load_sweep(path))
    run_job(graph.jobs[graph.by_kind("prepare")[0]])
    train_job = graph.jobs[graph.by_kind("train")[0]]

    executor = make_executor(load_profile(ROOT / "slurm" / "profiles" / "local.toml"), tmp_path / "submitit", "train")
    executor.update_parameters(timeout_min=60)  # the signal is then a preemption, not the time limit
    job = executor.submit(JobRunner(), train_job, "cpu")
    last = train_job.run / "last.pt"
    slurm_cluster.wait_for("the first epoch's checkpoint", last.is_file, 300, [job])
    job._interrupt()  # type: ignore[attr-defined]  # SLURM's preemption signals
    slurm_cluster.wait_for(
        "the job to be requeued", lambda: slurm_cluster.squeue(job.job_id)[0] in ("PENDING", "REQUEUED"), 60, [job]
    )
    slurm_cluster.release_requeued(job.job_id)
    slurm_cluster.wait_done([job], timeout=300)
    assert job.result() == str(train_job.run)
    metrics = json.loads((train_job.run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 5
    logs = Path(job.paths.stderr).read_text()
    assert "resuming after epoch" in logs, logs[-2000:]
