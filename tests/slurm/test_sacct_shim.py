"""The sacct shim: submitit learns every job's state on a cluster without slurmdbd.

The record file is real: ``golden/jobcomp-slurm-22.05.txt`` holds lines ``jobcomp/filetxt``
wrote on this test cluster (COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, array tasks,
requeues), with job ids moved to 900001+ so they cannot meet the live cluster's jobs. The shim
reads it next to the live cluster's squeue, which knows none of those ids: exactly the case of
jobs slurmctld has already forgotten.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

SlurmInfoWatcher = pytest.importorskip(
    "submitit.slurm.slurm", reason="submitit not installed (a test extra, requirements-pinned.txt)"
).SlurmInfoWatcher

GOLDEN = Path(__file__).resolve().parent / "golden"
RECORDS = GOLDEN / "jobcomp-slurm-22.05.txt"
# submitit's own call (SlurmInfoWatcher._make_command), with the recorded jobs' ids.
SUBMITIT_ARGS = ["-o", "JobID,State,NodeList", "--parsable2"] + [
    a for i in (900001, 900003, 900004, 900005, 900007, 900011, 900013, 900025, 900026, 900027, 900028)
    for a in ("-j", str(i))
]


def conf_with(cluster: Any, tmp_path: Path, **settings: str) -> Path:
    """A copy of the live cluster's slurm.conf with some settings replaced."""
    text = cluster.conf.read_text()
    for key, value in settings.items():
        text, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.MULTILINE)
        if n == 0:
            text += f"{key}={value}\n"
    path = tmp_path / "slurm.conf"
    path.write_text(text)
    return path


def shim(cluster: Any, args: list[str], conf: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.dir / "bin" / "sacct"), *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "SLURM_CONF": str(conf or cluster.conf)}, check=False,
    )


def test_forgotten_jobs_are_answered_from_the_jobcomp_record(
    slurm_cluster: Any, tmp_path: Path, update_golden: bool
) -> None:
    out = shim(slurm_cluster, SUBMITIT_ARGS, conf_with(slurm_cluster, tmp_path, JobCompLoc=str(RECORDS)))
    assert out.returncode == 0, out.stderr
    states = {job: info["State"] for job, info in SlurmInfoWatcher().read_info(out.stdout).items()}
    assert states == {
        "900001": "TIMEOUT",
        "900003": "FAILED",
        "900004": "CANCELLED",
        # Array tasks by array id and task, whatever job id each task ran under.
        "900005_0": "COMPLETED", "900005_1": "COMPLETED", "900005_2": "FAILED", "900005_3": "COMPLETED",
        # Last line a requeue: that run was requeued; submitit keeps waiting, rightly.
        "900007": "REQUEUED",
        "900011_0": "REQUEUED",
        "900013": "CANCELLED",
        "900025": "FAILED",
        "900026": "COMPLETED",  # requeued, then completed: the last line wins
        "900027": "CANCELLED",  # node failure, requeued, then cancelled
        "900028": "NODE_FAIL",
    }
    golden = GOLDEN / "sacct-from-jobcomp.txt"
    if update_golden:
        golden.write_text(out.stdout)
    assert out.stdout == golden.read_text()


def test_table_output_names_exit_codes_and_survives_odd_job_names(slurm_cluster: Any, tmp_path: Path) -> None:
    conf = conf_with(slurm_cluster, tmp_path, JobCompLoc=str(RECORDS))
    out = shim(slurm_cluster, ["-X", "-o", "JobID,JobName%40,State,ExitCode", "-j", "900003,900013,900005_2"], conf)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert rows[0] == ["900003", "wrap", "FAILED", "3:0"]
    assert rows[1] == ["900005_2", "wrap", "FAILED", "5:0"]
    assert rows[2][0] == "900013" and "pipe chars" in out.stdout and rows[2][-2:] == ["CANCELLED", "0:0"]


def test_unsupported_options_are_refused_not_ignored(slurm_cluster: Any) -> None:
    out = shim(slurm_cluster, ["--starttime", "now", "--state", "FAILED"])
    assert out.returncode == 2 and "unsupported option '--state'" in out.stderr
    out = shim(slurm_cluster, ["-o", "JobID,MaxRSS"])
    assert out.returncode == 2 and "MaxRSS" in out.stderr


def test_no_answer_when_slurmctld_is_unreachable(slurm_cluster: Any, tmp_path: Path) -> None:
    """A wrong answer (say, a running job reported from an old record) would be worse than none."""
    conf = conf_with(slurm_cluster, tmp_path, SlurmctldPort=str(slurm_cluster.port + 50), MessageTimeout="1",
                     JobCompLoc=str(RECORDS))
    out = shim(slurm_cluster, SUBMITIT_ARGS, conf)
    assert out.returncode == 1
    assert "squeue failed" in out.stderr and out.stdout == ""


@pytest.mark.timeout(60)
def test_live_state_wins_over_the_record_after_a_node_failure(scratch_cluster: Any) -> None:
    """A node failure writes NODE_FAIL for a requeueable job that SLURM at once queues again."""
    requeueable = scratch_cluster.sbatch("--wrap", "sleep 120")
    final = scratch_cluster.sbatch("--no-requeue", "--wrap", "sleep 120")
    scratch_cluster.wait_for("both jobs to run", lambda: scratch_cluster.states(requeueable, final) == ["RUNNING"] * 2)
    scratch_cluster.command("scontrol", "update", "nodename=node1", "state=down", "reason=medhpc-test")
    scratch_cluster.wait_for("the node failure to be recorded",
                             lambda: (scratch_cluster.dir / "jobcomp.log").read_text().count("NODE_FAIL") == 2)
    scratch_cluster.wait_for("the failed jobs to settle",
                             lambda: scratch_cluster.states(requeueable, final) == ["PENDING", "NODE_FAIL"])
