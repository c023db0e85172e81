"""submitit on a real SLURM cluster: what the sweep relies on when it runs with ``executor: slurm``.

Job arrays return every result; a failing job is reported failed with its error, never waited
for forever; a job requeued mid-run resumes from its checkpoint and returns what an
uninterrupted run returns; a profile's resources reach the job. Every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from medhpc.sweep.cluster import Resources, executor_options, executor_parameters, load_profile

EXTRAS = "submitit or cloudpickle not installed (test extras, requirements-pinned.txt)"
cloudpickle = pytest.importorskip("cloudpickle", reason=EXTRAS)
submitit = pytest.importorskip("submitit", reason=EXTRAS)

# Jobs unpickle these functions on the node: send them by value (this module is not importable
# there under pytest's importlib mode).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)


def square_in_array(x: int) -> tuple[int, int]:
    return x * x, int(os.environ["SLURM_ARRAY_TASK_ID"])


def fail_with(message: str) -> None:
    raise ValueError(message)


def die_without_result(code: int) -> None:
    os._exit(code)  # the process ends before submitit can write a result


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def job_environment() -> dict[str, str]:
    keys = ("SLURM_JOB_PARTITION", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE", "SLURM_JOB_NAME",
            "CUDA_VISIBLE_DEVICES", "SLURM_ARRAY_TASK_COUNT")
    return {k: os.environ.get(k, "") for k in keys}


def count_steps(n: int, state_file: str, step_s: float) -> dict[str, Any]:
    """Sum 1..n one step at a time, saving progress after each step; resumes from the file.

    ``starts`` records the step each run began at, so a test sees whether a rerun resumed.
    """
    path = Path(state_file)
    state: dict[str, Any] = {"done": 0, "total": 0, "starts": []}
    if path.exists():
        state = json.loads(path.read_text())
    state["starts"].append(state["done"])
    while state["done"] < n:
        time.sleep(step_s)
        state["done"] += 1
        state["total"] += state["done"]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
    return state


class CheckpointedCount(submitit.helpers.Checkpointable):
    """``count_steps`` as a checkpointable callable: on preemption submitit checkpoints and requeues."""

    def __call__(self, n: int, state_file: str, step_s: float) -> dict[str, Any]:
        return count_steps(n, state_file, step_s)


def progress(state_file: Path) -> int:
    try:
        return int(json.loads(state_file.read_text())["done"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture()
def executor(slurm_cluster: Any, tmp_path: Path) -> submitit.AutoExecutor:
    """An AutoExecutor for the test cluster, set up from the shipped ``local`` profile."""
    profile = load_profile("local")
    ex = submitit.AutoExecutor(tmp_path / "jobs", cluster="slurm", **executor_options(profile))
    ex.update_parameters(**executor_parameters(profile, "evaluate"))
    return ex


def test_job_array_returns_every_result_in_order(slurm_cluster: Any, executor: submitit.AutoExecutor) -> None:
    jobs = executor.map_array(square_in_array, [1, 2, 3, 4])
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(4)]  # one array, 4 tasks
    slurm_cluster.wait_done(jobs, timeout=90)
    assert [j.result() for j in jobs] == [(1, 0), (4, 1), (9, 2), (16, 3)]
    # The sacct shim reports each task of the array by its own id.
    assert [slurm_cluster.final_state(j) for j in jobs] == ["COMPLETED"] * 4


def test_failing_job_is_reported_failed_with_its_error(slurm_cluster: Any, executor: submitit.AutoExecutor) -> None:
    job = executor.submit(fail_with, "bad input 7")
    slurm_cluster.wait_done([job], timeout=60)
    error = job.exception()
    assert isinstance(error, submitit.core.utils.FailedJobError)
    assert "ValueError: bad input 7" in str(error)
    with pytest.raises(submitit.core.utils.FailedJobError, match="bad input 7"):
        job.result()
    assert slurm_cluster.final_state(job) == "FAILED"


def test_job_ending_without_a_result_is_reported_not_waited_for(
    slurm_cluster: Any, executor: submitit.AutoExecutor
) -> None:
    """Without an sacct that answers, result() of these jobs would wait forever."""
    died = executor.submit(die_without_result, 3)
    cancelled = executor.submit(sleep_for, 300)
    slurm_cluster.wait_for(
        "the sleeping job to start", lambda: slurm_cluster.squeue(cancelled.job_id)[0] == "RUNNING", 60, [cancelled]
    )
    cancelled.cancel()
    slurm_cluster.wait_done([died, cancelled], timeout=60)
    assert slurm_cluster.final_state(died) == "FAILED"
    assert slurm_cluster.final_state(cancelled) == "CANCELLED"
    for job in (died, cancelled):
        job._results_timeout_s = 1  # submitit's grace for a slow file system, 15 s by default
        with pytest.raises(submitit.core.utils.UncompletedJobError, match="has not produced any output"):
            job.result()


def test_preempted_job_resumes_from_its_checkpoint(
    slurm_cluster: Any, executor: submitit.AutoExecutor, tmp_path: Path
) -> None:
    """submitit's preemption path: SIGTERM + USR2, checkpoint(), ``scontrol requeue``, rerun."""
    state_file = tmp_path / "count.json"
    n = 50  # 5 s of work: still running when the signal comes
    # A 60 min limit: submitit then treats the signal as a preemption, not as the job's timeout.
    executor.update_parameters(timeout_min=60)
    job = executor.submit(CheckpointedCount(), n, str(state_file), 0.1)  # type: ignore[no-untyped-call]
    slurm_cluster.wait_for("the job to make progress", lambda: progress(state_file) >= 5, 60, [job])
    job._interrupt()  # type: ignore[attr-defined]  # SLURM's preemption signals, as submitit's tests send them
    slurm_cluster.wait_for(
        "the job to be requeued", lambda: slurm_cluster.squeue(job.job_id)[0] in ("PENDING", "REQUEUED"), 30, [job]
    )
    slurm_cluster.release_requeued(job.job_id)
    slurm_cluster.wait_done([job], timeout=60)
    result = job.result()
    assert result["done"] == n and result["total"] == n * (n + 1) // 2  # as an uninterrupted run
    assert len(result["starts"]) == 2 and result["starts"][0] == 0
    assert result["starts"][1] >= 5  # the second run began where the first stopped, not at 0
    assert slurm_cluster.final_state(job) == "COMPLETED"


def test_requeued_job_resumes_from_its_checkpoint_file(
    slurm_cluster: Any, executor: submitit.AutoExecutor, tmp_path: Path
) -> None:
    """``scontrol requeue`` (an admin, a node failure): the job is killed without a checkpoint
    call and rerun from scratch; a job that saves its progress resumes from that file."""
    state_file = tmp_path / "count.json"
    n = 100  # 10 s of work: still running when SLURM's KillWait (5 s) ends the first run
    job = executor.submit(count_steps, n, str(state_file), 0.1)
    slurm_cluster.wait_for("the job to make progress", lambda: progress(state_file) >= 5, 60, [job])
    slurm_cluster.command("scontrol", "requeue", job.job_id)
    slurm_cluster.wait_for(
        "the job to be requeued", lambda: slurm_cluster.squeue(job.job_id)[0] in ("PENDING", "REQUEUED"), 30, [job]
    )
    slurm_cluster.release_requeued(job.job_id)
    slurm_cluster.wait_done([job], timeout=60)
    result = job.result()
    assert result["done"] == n and result["total"] == n * (n + 1) // 2
    assert len(result["starts"]) == 2 and result["starts"][0] == 0 and result["starts"][1] >= 5


def test_profile_resources_reach_the_job(slurm_cluster: Any, tmp_path: Path) -> None:
    """Partition, CPUs, memory, job name and (fake) GPUs asked for by a profile are what SLURM grants."""
    base = load_profile("local")
    asked = Resources(partition="local", gpus_per_node=1, cpus_per_task=2, mem_gb=1.5, timeout_min=5)
    jobs = {}
    requests: tuple[tuple[Literal["gpus_per_node", "gres"], int], ...] = (("gpus_per_node", 1), ("gres", 2))
    for request, gpus in requests:
        profile = dataclasses.replace(
            base, gpu_request=request, train=dataclasses.replace(asked, gpus_per_node=gpus)
        )
        ex = submitit.AutoExecutor(tmp_path / request, cluster="slurm", **executor_options(profile))
        ex.update_parameters(**executor_parameters(profile, "train"))
        jobs[request] = ex.submit(job_environment)
    slurm_cluster.wait_done(list(jobs.values()), timeout=60)
    env = {request: job.result() for request, job in jobs.items()}
    common = {"SLURM_JOB_PARTITION": "local", "SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_NODE": "1536",
              "SLURM_JOB_NAME": "medhpc-train", "SLURM_ARRAY_TASK_COUNT": ""}
    assert env["gpus_per_node"] == {**common, "CUDA_VISIBLE_DEVICES": "0"}
    assert env["gres"] == {**common, "CUDA_VISIBLE_DEVICES": "0,1"}
