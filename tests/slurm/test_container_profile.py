"""A profile whose `python` is a container command: submitit's batch script runs every job through
it, and the container mistakes that would waste a queue slot are refused when the profile loads.
No cluster needed (a stand-in `srun` on PATH is all submitit's SLURM executor asks for)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from medhpc.config import ConfigError
from medhpc.sweep.cluster import JOB_KINDS, load_profile, make_executor

CONTAINER = "apptainer exec --nv --bind /shared /shared/images/medhpc.sif python"


@pytest.fixture()
def srun_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit's SlurmExecutor refuses to start where no `srun` is found; it never runs it here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_sbatch_script_runs_each_job_through_the_container_command(srun_on_path: None, tmp_path: Path) -> None:
    pytest.importorskip("submitit", reason="submitit not installed (a test extra, requirements-pinned.txt)")
    profile = load_profile(
        write(
            tmp_path,
            f'name = "site"\nsetup = ["module load apptainer"]\npython = "{CONTAINER}"\n'
            "[default]\ngpus_per_node = 1\n[report]\ngpus_per_node = 0\n",
        )
    )
    folder = tmp_path / "jobs"
    for kind in JOB_KINDS:
        slurm: Any = make_executor(profile, folder, kind)._executor  # the SlurmExecutor inside
        script = slurm._make_submission_file_text(slurm._submitit_command_str, "uid")
        lines = script.splitlines()
        (command,) = [line for line in lines if line.startswith("srun ")]
        # srun ... <container command> -u -m submitit.core._submit <folder>: the job's Python is
        # the image's, and the container command is used verbatim (no quoting that would make
        # "apptainer exec ..." one word).
        assert f" {CONTAINER} -u -m submitit.core._submit {shlex.quote(str(folder))}" in command, script
        assert lines.index("module load apptainer") < lines.index(command)  # set up before the job
        gpus = "#SBATCH --gpus-per-node=1" in lines
        assert gpus == (kind != "report"), (kind, script)


def test_the_shipped_example_profile_passes_the_container_checks() -> None:
    profile = load_profile("example-gpu")
    assert profile.python == CONTAINER


@pytest.mark.parametrize(
    ("python", "message"),
    [
        # exec with nothing after the image: submitit's "-u -m ..." would be the container's command
        ("apptainer exec --nv --bind /shared /shared/images/medhpc.sif", "runs the command after the image"),
        ("singularity exec --nv medhpc.sif", "runs the command after the image"),
        # GPUs asked for but not passed into the container: the jobs would train on the CPU
        ("apptainer exec --bind /shared /shared/images/medhpc.sif python", "only with --nv"),
        ("/usr/bin/apptainer exec medhpc.sif python3", "only with --nv"),
        ("apptainer exec medhpc.sif python --nv", "only with --nv"),  # after the image: python's argument
        ("apptainer run --bind /shared", "no image given"),
    ],
)
def test_container_mistakes_are_refused_when_the_profile_loads(tmp_path: Path, python: str, message: str) -> None:
    path = write(tmp_path, f'name = "s"\npython = "{python}"\n[train]\ngpus_per_node = 1\n')
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    text = str(info.value)
    assert str(path) in text and ": python: " in text and message in text, text
    if "--nv" in message:
        assert "train" in text  # names the kind that asks for GPUs


@pytest.mark.parametrize(
    "python",
    [
        "apptainer exec --nv -B /shared:/shared,/data /shared/images/medhpc.sif python",
        "apptainer exec --nvccli --env OMP_NUM_THREADS=8 medhpc.sif /opt/venv/bin/python",
        "apptainer run --nv medhpc.sif",  # the image's run script is `exec python "$@"`
        "singularity --debug exec --nv medhpc.sif python",  # global options: not parsed, not refused
        "/shared/envs/medhpc/bin/python",
        "srun-wrapper python",
    ],
)
def test_valid_commands_pass(tmp_path: Path, python: str) -> None:
    profile = load_profile(write(tmp_path, f'name = "s"\npython = "{python}"\n[train]\ngpus_per_node = 1\n'))
    assert profile.python == python


def test_no_gpu_asked_for_needs_no_nv(tmp_path: Path) -> None:
    """The test cluster's CPU-only jobs in a container: --nv is not required."""
    profile = load_profile(write(tmp_path, 'name = "s"\npython = "apptainer exec medhpc.sif python"\n'))
    assert profile.python == "apptainer exec medhpc.sif python"
