"""The sweep on the real SLURM cluster with a profile whose `python` is a container command, as on
a site with Apptainer: every job of every stage runs through that command. `fake-apptainer`
stands in for apptainer (no container engine runs here): it checks its command line as
apptainer reads it, logs the job it runs, and runs the host's Python."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from medhpc.sweep import load_sweep
from medhpc.sweep.launch import run_submitit
from medhpc.sweep.run import status

pytest.importorskip("submitit", reason="submitit not installed (a test extra, requirements-pinned.txt)")

HERE = Path(__file__).resolve().parent
FAKE_APPTAINER = HERE / "fake-apptainer"


def test_every_sweep_job_runs_through_the_profiles_container_command(slurm_cluster: Any, tmp_path: Path) -> None:
    image = tmp_path / "images" / "medhpc.sif"
    image.parent.mkdir()
    image.write_bytes(b"")  # the stand-in only checks that the image is there
    calls = tmp_path / "apptainer-calls.log"
    q = shlex.quote
    container = f"{q(str(FAKE_APPTAINER))} exec --nv --bind {q(str(tmp_path))} {q(str(image))} python"
    # The test cluster's profile (local.toml) with the container command and, as a site's
    # `module load apptainer` would, setup lines that configure the stand-in.
    setup = [f"export FAKE_APPTAINER_LOG={q(str(calls))}", f"export FAKE_APPTAINER_PYTHON={q(sys.executable)}"]
    top = f'name = "container"\npython = {json.dumps(container)}\nsetup = {json.dumps(setup)}'
    local = (HERE.parents[1] / "slurm" / "profiles" / "local.toml").read_text()
    assert local.count('name = "local"') == 1
    profile = tmp_path / "container.toml"
    profile.write_text(local.replace('name = "local"', top))

    cfg = {
        "name": "container",
        "datasets": [
            {"name": "aptos", "kind": "aptos", "root": "synthetic", "size": 32, "synthetic": {"n": 40, "size": 32}}
        ],
        "models": {"archs": ["resnet50"], "heads": ["linear"]},
        "train": {"optim": {"name": "adam", "lr": 1e-3}, "epochs": 1, "patience": None},
        "attacks": [{"attack": "none"}],
        "limit": 4,
        "shard_size": 4,
        "out": str(tmp_path / "out"),
        "executor": "slurm",
        "profile": str(profile),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sweep = load_sweep(path)
    result = run_submitit(sweep, poll_s=0.5, deadline_s=300)

    assert result["failed"] == {} and result["blocked"] == [], result
    counts = status(sweep)
    assert set(counts) == {"prepare", "train", "attack", "evaluate", "report"}
    assert all(c["done"] == c["total"] >= 1 for c in counts.values()), counts

    # Every job SLURM ran (submitit's logs are <job id>_<rank>_log.out) went through the stand-in,
    # once, in the image, with --nv, as `python -u -m submitit.core._submit <the stage's folder>`.
    submitit_dir = Path(sweep.out) / "submitit"
    jobs = {p.name.removesuffix("_0_log.out"): p.parent.name for p in submitit_dir.glob("*/*_0_log.out")}
    assert set(jobs.values()) == set(counts), jobs
    logged = [line.split("\t") for line in calls.read_text().splitlines()]
    assert sorted(row[0] for row in logged) == sorted(jobs), (logged, jobs)
    for job_id, image_used, options, command in logged:
        assert image_used == str(image) and options == f"--nv --bind {tmp_path}"
        assert command == f"python -u -m submitit.core._submit {submitit_dir / jobs[job_id]}"
    # The batch scripts that SLURM received run the container command under srun.
    scripts = list(submitit_dir.glob("*/*_submission.sh"))
    assert {p.parent.name for p in scripts} == set(counts)
    for script in scripts:
        (srun,) = [line for line in script.read_text().splitlines() if line.startswith("srun ")]
        assert f" {container} -u -m submitit.core._submit " in srun, srun
