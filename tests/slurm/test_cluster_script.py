"""slurm/cluster.sh: start is idempotent, refuses to silently change a running cluster and says
what failed; stop ends exactly what it started (another cluster on the machine lives on), leaves
no job running, and is safe to repeat."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)


def start_args(cluster: Any, *extra: str) -> list[str]:
    return ["start", "--dir", str(cluster.dir), "--port", str(cluster.port), *extra]


def test_start_twice_keeps_the_running_daemons(scratch_cluster: Any, cluster_sh: Any) -> None:
    pids = scratch_cluster.daemon_pids()
    assert set(pids) == {"munged", "slurmctld", "slurmd-node1"}
    again = cluster_sh(*start_args(scratch_cluster))
    assert again.returncode == 0, again.stderr
    assert scratch_cluster.daemon_pids() == pids
    status = cluster_sh("status", "--dir", str(scratch_cluster.dir))
    assert status.returncode == 0 and "slurmd node1: running" in status.stdout


def test_start_with_other_settings_is_refused_while_running(scratch_cluster: Any, cluster_sh: Any) -> None:
    conf = scratch_cluster.conf.read_text()
    out = cluster_sh(*start_args(scratch_cluster, "--gpus", "1"))
    assert out.returncode == 1
    assert "already running" in out.stderr and "other settings" in out.stderr and "stop" in out.stderr
    assert scratch_cluster.conf.read_text() == conf
    assert all(scratch_cluster.alive(pid) for pid in scratch_cluster.daemon_pids().values())


def test_stop_ends_its_cluster_and_jobs_only(
    slurm_cluster: Any, scratch_cluster: Any, cluster_sh: Any, tmp_path: Path
) -> None:
    pid_file = tmp_path / "job.pid"
    scratch_cluster.sbatch("--wrap", f"echo $$ > {pid_file}; exec sleep 300")
    job_pid = int(scratch_cluster.wait_for("the job to start", lambda: pid_file.exists() and pid_file.read_text()))
    scratch_pids = scratch_cluster.daemon_pids()
    session_pids = slurm_cluster.daemon_pids()

    out = cluster_sh("stop", "--dir", str(scratch_cluster.dir))
    assert out.returncode == 0, out.stderr
    assert not any(scratch_cluster.alive(pid) for pid in scratch_pids.values())
    assert not scratch_cluster.alive(job_pid)  # no job outlives its cluster
    assert not list((scratch_cluster.dir / "run").glob("*.pid"))
    # The other cluster on this machine is untouched and still answers.
    assert all(slurm_cluster.alive(pid) for pid in session_pids.values())
    assert "idle" in slurm_cluster.command("sinfo", "-h", "-o", "%t")

    again = cluster_sh("stop", "--dir", str(scratch_cluster.dir))
    assert again.returncode == 0, again.stderr
    assert cluster_sh("status", "--dir", str(scratch_cluster.dir)).returncode == 3
    assert cluster_sh("stop", "--dir", str(tmp_path / "never-started")).returncode == 0


def test_failed_start_names_the_daemon_and_its_log_and_leaves_nothing_running(
    slurm_cluster: Any, cluster_sh: Any
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="medhpc-slurm-", dir="/tmp"))
    try:
        with socket.socket() as blocker:  # someone else holds the controller's port
            blocker.bind(("0.0.0.0", 0))
            blocker.listen()
            port = blocker.getsockname()[1]
            out = cluster_sh("start", "--dir", str(folder), "--port", str(port), "--timeout", "20")
        assert out.returncode == 1
        assert "slurmctld failed" in out.stderr and "Address already in use" in out.stderr
        assert str(folder / "log" / "slurmctld.log") in out.stderr
        assert cluster_sh("status", "--dir", str(folder)).returncode == 3
    finally:
        cluster_sh("stop", "--dir", str(folder))
        shutil.rmtree(folder, ignore_errors=True)


def test_a_folder_too_long_for_slurms_sockets_is_refused_up_front(cluster_sh: Any, tmp_path: Path) -> None:
    """Else every job would fail to launch, "launch failed requeued held", with no hint why."""
    out = cluster_sh("start", "--dir", str(tmp_path / ("x" * 80)))
    assert out.returncode == 1 and "too long" in out.stderr and "107" in out.stderr
    assert not (tmp_path / ("x" * 80)).exists()


def test_several_nodes_and_fake_gpus_on_one_machine(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=2, gpus=1)
    nodes = cluster.command("sinfo", "-h", "-N", "-o", "%N %t %G").splitlines()
    assert sorted(nodes) == ["node1 idle gpu:1", "node2 idle gpu:1"]
    script = "echo $SLURMD_NODENAME $CUDA_VISIBLE_DEVICES"
    steps = cluster.command("srun", "-N2", "--gres=gpu:1", "bash", "-c", script, timeout=60).splitlines()
    assert sorted(steps) == ["node1 0", "node2 0"]  # one step on each node, each given its GPU
