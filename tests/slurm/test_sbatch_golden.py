"""Golden files of the sbatch scripts submitit writes for our cluster profiles.

A reviewer reads these files to see exactly what a site's scheduler will receive; any change
(a renamed submitit parameter, a profile edit, a submitit upgrade) shows up as a diff here.
``MEDHPC_UPDATE_GOLDEN=1 pytest tests/slurm`` rewrites them after an intended change.

The example-gpu scripts are rendered by the SlurmExecutor exactly as at submission (the cluster
it names does not exist here); the local one is the file submitit wrote for a real job.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any, Literal

import pytest

from medhpc.sweep.cluster import ClusterProfile, load_profile, make_executor

submitit = pytest.importorskip("submitit", reason="submitit not installed (a test extra, requirements-pinned.txt)")
_make_sbatch_string = pytest.importorskip("submitit.slurm.slurm")._make_sbatch_string

GOLDEN = Path(__file__).resolve().parent / "golden"
SITE_FOLDER = "/shared/sweeps/demo/slurm/%j"  # where a sweep on the example site keeps its jobs


def sbatch_script(profile: ClusterProfile, kind: str, array_size: int | None = None) -> str:
    """The sbatch file submitit would submit for one job (or a job array) of ``kind``."""
    executor = make_executor(profile, SITE_FOLDER, kind)  # type: ignore[arg-type]
    slurm: Any = executor._executor  # the SlurmExecutor inside the AutoExecutor
    command = slurm._submitit_command_str
    if array_size is None:
        return str(slurm._make_submission_file_text(command, "uid"))
    # What SlurmExecutor does for map_array: the same parameters plus the array size.
    return _make_sbatch_string(command=command, folder=slurm.folder, map_count=array_size, **slurm.parameters)


def check_golden(text: str, name: str, update: bool) -> None:
    path = GOLDEN / name
    if update:
        path.write_text(text)
        return
    assert path.exists(), f"no golden file {path}: run with MEDHPC_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"the sbatch script differs from {path} (MEDHPC_UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize(
    ("kind", "array_size", "gpu_request", "name"),
    [
        ("train", None, "gpus_per_node", "example-gpu-train.sbatch"),
        ("attack", 100, "gpus_per_node", "example-gpu-attack-array.sbatch"),
        ("prepare", None, "gpus_per_node", "example-gpu-prepare.sbatch"),
        ("train", None, "gres", "example-gpu-train-gres.sbatch"),
    ],
)
def test_example_gpu_profile_sbatch_matches_golden(
    slurm_cluster: Any,
    update_golden: bool,
    kind: str,
    array_size: int | None,
    gpu_request: Literal["gpus_per_node", "gres"],
    name: str,
) -> None:
    profile = dataclasses.replace(load_profile("example-gpu"), gpu_request=gpu_request)
    check_golden(sbatch_script(profile, kind, array_size), name, update_golden)


def test_example_gpu_train_script_asks_for_what_the_profile_says(slurm_cluster: Any) -> None:
    """The golden file is what it should be, not just what it was: the key lines, spelled out."""
    lines = set(sbatch_script(load_profile("example-gpu"), "train").splitlines())
    for line in (
        "#SBATCH --partition=gpu", "#SBATCH --account=proj-medhpc", "#SBATCH --qos=long",
        "#SBATCH --constraint='a100|h100'", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB", "#SBATCH --time=1440", "#SBATCH --signal=USR2@180",
        "#SBATCH --mail-type=FAIL", "#SBATCH --requeue", "#SBATCH --job-name=medhpc-train",
        "module load apptainer",
    ):
        assert line in lines, line
    command = [ln for ln in lines if ln.startswith("srun ")]
    assert len(command) == 1
    expected = "apptainer exec --nv --bind /shared /shared/images/medhpc.sif python -u -m submitit.core._submit"
    assert expected in command[0]
    array = sbatch_script(load_profile("example-gpu"), "attack", array_size=100)
    assert "#SBATCH --array=0-99%64" in array.splitlines()  # array_parallelism = 64


def test_local_profile_job_script_matches_golden(slurm_cluster: Any, tmp_path: Path, update_golden: bool) -> None:
    """The sbatch file submitit actually wrote and submitted for a job on the test cluster."""
    folder = tmp_path / "jobs"
    executor = make_executor(load_profile("local"), folder, "report")
    job = executor.submit(sum, [1, 2, 3])
    slurm_cluster.wait_done([job], timeout=60)
    assert job.result() == 6
    text = job.paths.submission_file.read_text()
    text = text.replace(str(folder), "<FOLDER>").replace(shlex.quote(sys.executable), "<PYTHON>")
    check_golden(text, "local-report.sbatch", update_golden)


def test_submitit_accepts_every_kind_of_both_profiles(slurm_cluster: Any, tmp_path: Path) -> None:
    """submitit validates parameter names and renders a script for each (no typo reaches a queue)."""
    for name in ("local", "example-gpu"):
        for kind in ("prepare", "train", "attack", "evaluate", "report"):
            executor = make_executor(load_profile(name), tmp_path / name, kind)
            assert isinstance(executor, submitit.AutoExecutor)
            assert f"--job-name=medhpc-{kind}" in sbatch_script(load_profile(name), kind)
