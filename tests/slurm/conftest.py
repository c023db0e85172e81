"""A real SLURM cluster for the tests of this folder, started once per session.

``slurm_cluster`` runs ``slurm/cluster.sh start`` in a temporary folder on free ports (1 node,
this machine's CPUs and memory, 2 fake GPUs), puts its ``sacct`` shim first on PATH and
SLURM_CONF in the environment for the session, and stops it at the end. It installs the SLURM
packages when they are missing (CI: fresh Debian, root, apt). It skips, saying why, only where
that cannot work: not root, or packages missing without apt-get.

The fixture's helpers bound every wait: a job that does not finish in time is cancelled and the
test fails with squeue's view and the job's log paths, instead of hanging.

(The project runs pytest with ``--import-mode=importlib``: tests share these through fixtures.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "slurm" / "cluster.sh"
SLURM_COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol")


def free_port_range(count: int) -> int:
    """A first port P such that P..P+count-1 are all free on this machine now."""
    for base in range(21000, 60000, 97):
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free range of ports for a test cluster")


def run_cluster_sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``slurm/cluster.sh ARGS``, output captured; never raises on a non-zero exit."""
    return subprocess.run(
        ["bash", str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie left for a non-reaping init does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@dataclass
class Cluster:
    """The session's test cluster and bounded ways to wait on it."""

    dir: Path
    port: int

    @property
    def conf(self) -> Path:
        return self.dir / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment of ``source DIR/env.sh``: this cluster's config, its sacct first."""
        path = f"{self.dir / 'bin'}{os.pathsep}{os.environ['PATH']}{os.pathsep}/usr/sbin"
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def command(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run a SLURM client command (squeue, scontrol, sacct, ...) on this cluster; its stdout."""
        out = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False, env=self.env
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out.stdout

    def sbatch(self, *args: str) -> str:
        """Submit a batch job; its id."""
        return self.command("sbatch", "--parsable", "--output=/dev/null", *args).strip()

    def states(self, *job_ids: str) -> list[str]:
        """The jobs' states as the sacct shim reports them, in the order asked."""
        out = self.command("sacct", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids))
        found = dict(line.split("|", 1) for line in out.splitlines() if line)
        return [found.get(j, "") for j in job_ids]

    def squeue(self, job_id: str) -> tuple[str, str]:
        """(state, reason) of one job or array task as slurmctld sees it; ("", "") if unknown."""
        out = self.command("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r", check=False).strip()
        state, _, reason = out.partition("|")
        return state, reason

    def daemon_pids(self) -> dict[str, int]:
        """The pids recorded in this cluster's pid files."""
        return {p.stem: read_pid(p) for p in sorted((self.dir / "run").glob("*.pid"))}

    def alive(self, pid: int) -> bool:
        return alive(pid)

    def diagnostics(self, jobs: Sequence[Any] = ()) -> str:
        lines = ["squeue -t all:", self.command("squeue", "-t", "all", "-r", check=False)]
        for job in jobs:
            lines.append(f"job {job.job_id}: stdout {job.paths.stdout}, stderr {job.paths.stderr}")
            if job.paths.stderr.exists():
                lines.append(job.paths.stderr.read_text()[-2000:])
        lines.append(f"cluster logs: {self.dir / 'log'}")
        return "\n".join(lines)

    def wait_done(self, jobs: Sequence[Any], timeout: float) -> None:
        """Wait until every submitit job is done (result written or SLURM says it ended).

        Fails the test after ``timeout`` seconds, cancelling the jobs: a test never hangs.
        """
        deadline = time.monotonic() + timeout
        while True:
            # The first unfinished job forces an sacct call; it refreshes the watcher all share.
            pending: list[Any] = []
            for job in jobs:
                if not job.done(force_check=not pending):
                    pending.append(job)
            if not pending:
                return
            if time.monotonic() > deadline:
                report = self.diagnostics(pending)
                for job in pending:
                    job.cancel(check=False)
                pytest.fail(f"{len(pending)} job(s) not done after {timeout:.0f} s:\n{report}")
            time.sleep(0.5)

    def wait_for(self, what: str, predicate: Any, timeout: float = 30, jobs: Sequence[Any] = ()) -> Any:
        """Poll ``predicate()`` until it returns something truthy; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.diagnostics(jobs)}")
            time.sleep(0.2)

    def sacct_state(self, job: Any) -> str:
        """The job's state as submitit reads it, through the sacct shim (a forced call)."""
        return str(job.watcher.get_state(job.job_id, mode="force"))

    def final_state(self, job: Any, timeout: float = 30) -> str:
        """The job's state once SLURM has finished with it (no longer pending/running/completing)."""
        transient = {"PENDING", "RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING", "UNKNOWN"}
        return str(
            self.wait_for(
                f"job {job.job_id} to end in SLURM",
                lambda: (s := self.sacct_state(job)) not in transient and s,
                timeout,
                [job],
            )
        )

    def release_requeued(self, job_id: str, timeout: float = 60) -> None:
        """Start a requeued job now instead of after SLURM's ~120 s requeue delay.

        Only once the job has been pending for 2 s: slurmd keeps the first run's credential
        revoked, with a one-second resolution, and a restart within it ends the job FAILED
        ("Killing non-startable batch JobId=N: Job credential revoked"), never running it.
        """
        pending_since: float | None = None

        def started() -> bool:
            nonlocal pending_since
            state, reason = self.squeue(job_id)
            if state == "PENDING" and reason == "BeginTime":
                pending_since = pending_since or time.monotonic()
                if time.monotonic() - pending_since >= 2.0:
                    self.command("scontrol", "update", f"jobid={job_id}", "StartTime=now", check=False)
                return False
            return state not in ("PENDING", "COMPLETING", "REQUEUED", "")

        self.wait_for(f"requeued job {job_id} to start again", started, timeout)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root (run the tests as root, as CI does)"
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]
    if missing and shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(missing)} missing) and apt-get is not available"
    return None


def short_dir() -> Path:
    """A new folder under /tmp: SLURM's unix sockets under a cluster's folder must stay within
    107 characters, which pytest's own temporary paths can exceed."""
    return Path(tempfile.mkdtemp(prefix="medhpc-slurm-", dir="/tmp"))


def stop_and_remove(cluster: Cluster) -> None:
    """Stop a test cluster; remove its folder if it stopped (else keep it, logs included)."""
    stop = run_cluster_sh("stop", "--dir", str(cluster.dir))
    if stop.returncode != 0:
        raise RuntimeError(f"slurm/cluster.sh stop failed (folder kept: {cluster.dir}):\n{stop.stderr}")
    shutil.rmtree(cluster.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    """A running one-node SLURM cluster with 2 fake GPUs; sacct shim and SLURM_CONF in the env."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = Cluster(dir=short_dir(), port=free_port_range(2))
    # Installing the packages on a fresh machine takes 10-30 s; a start itself well under 1 s.
    out = run_cluster_sh(
        "start", "--dir", str(cluster.dir), "--gpus", "2", "--port", str(cluster.port), "--timeout", "60",
        timeout=900,
    )
    if out.returncode != 0:
        pytest.fail(f"slurm/cluster.sh start failed (exit {out.returncode}):\n{out.stderr}")
    with pytest.MonkeyPatch.context() as mp:
        # submitit runs sbatch, sacct, scancel from the environment; its jobs inherit it.
        for key in ("SLURM_CONF", "PATH"):
            mp.setenv(key, cluster.env[key])
        try:
            yield cluster
        finally:
            stop_and_remove(cluster)


@pytest.fixture()
def make_cluster(slurm_cluster: Cluster) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(nodes=2, gpus=1)``: another, throw-away cluster (own folder, free ports),
    for tests that break or stop one; each is stopped at the end of the test.

    Depends on the session cluster so that the packages are installed and the skip rules hold.
    """
    started: list[Cluster] = []

    def make(nodes: int = 1, gpus: int = 0) -> Cluster:
        cluster = Cluster(dir=short_dir(), port=free_port_range(nodes + 1))
        started.append(cluster)
        out = run_cluster_sh(
            "start", "--dir", str(cluster.dir), "--port", str(cluster.port),
            "--nodes", str(nodes), "--gpus", str(gpus),
        )
        if out.returncode != 0:
            pytest.fail(f"slurm/cluster.sh start failed:\n{out.stderr}")
        return cluster

    try:
        yield make
    finally:
        for cluster in started:
            stop_and_remove(cluster)


@pytest.fixture()
def scratch_cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A throw-away one-node cluster without GPUs (see ``make_cluster``)."""
    return make_cluster()


@pytest.fixture()
def cluster_sh() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cluster_sh("start", "--dir", ...)`` runs slurm/cluster.sh; exit status not checked."""
    return run_cluster_sh


@pytest.fixture()
def update_golden() -> bool:
    """``MEDHPC_UPDATE_GOLDEN=1`` rewrites golden files instead of comparing with them."""
    return os.environ.get("MEDHPC_UPDATE_GOLDEN") == "1"
