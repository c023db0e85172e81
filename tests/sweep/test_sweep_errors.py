"""Errors a sweep can find early are found early (a dataset root that does not exist, when
``run`` loads the config); a job that ended without a result keeps submitit's reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from medhpc.config import ConfigError, config_hash, from_dict
from medhpc.data import DataError, make_synthetic
from medhpc.sweep import SweepConfig, expand, load_sweep
from medhpc.sweep.__main__ import main
from medhpc.sweep.config import DatasetSpec, check_data_roots
from medhpc.sweep.launch import _summary


def write_sweep(tmp_path: Path, root: Path, **dataset: Any) -> Path:
    cfg = {
        "name": "early",
        "datasets": [
            {"name": "aptos", "kind": "aptos", "root": "unused", "size": 32, "synthetic": {"n": 20, "size": 32}},
            {"name": "cxr", "kind": "cxr", "root": str(root), "size": 32, **dataset},
        ],
        "attacks": [{"attack": "none"}],
        "out": str(tmp_path / "out"),
        "executor": "debug",
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_refuses_a_missing_root_when_the_config_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-data"
    path = write_sweep(tmp_path, missing)
    with pytest.raises(ConfigError, match=rf"^{path}: datasets\[1\]\.root: dataset folder does not exist: {missing} "):
        load_sweep(path, check_roots=True)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: datasets[1].root: dataset folder does not exist: {missing}")
    assert not (tmp_path / "out").exists()  # nothing submitted, nothing written (not even the synthetic data)


def test_a_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data.zip"
    root.write_bytes(b"PK")
    with pytest.raises(ConfigError, match=r"datasets\[1\]\.root: is not a folder: .*data\.zip"):
        load_sweep(write_sweep(tmp_path, root), check_roots=True)


def test_status_and_report_still_load_without_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished sweep's raw data may be gone (moved, unmounted); only ``run`` needs it."""
    path = write_sweep(tmp_path, tmp_path / "moved-away")
    load_sweep(path)  # what status, report and the Python API do
    assert main(["status", str(path)]) == 0
    assert "prepare       0 / 2" in capsys.readouterr().out
    assert main(["report", str(path)]) == 2
    assert "no report yet" in capsys.readouterr().err  # not a complaint about the root


def test_prepared_datasets_need_no_root_and_ignore_unknown_reaches_the_reader(tmp_path: Path) -> None:
    root = tmp_path / "kermany"
    make_synthetic("cxr", root, n=20, size=32, seed=0, workers=1)
    covid = root / "chest_xray" / "train" / "COVID"
    covid.mkdir()
    path = write_sweep(tmp_path, root)
    cfg = load_sweep(path, check_roots=True)  # the root exists
    prepare = next(j for j in expand(cfg).jobs.values() if j.kind == "prepare" and j.dataset.name == "cxr")
    with pytest.raises(DataError, match=f"{covid}/"):
        prepare.execute()
    assert not Path(prepare.cache).exists()
    lenient = load_sweep(write_sweep(tmp_path, root, ignore_unknown=True), check_roots=True)
    prepare = next(j for j in expand(lenient).jobs.values() if j.kind == "prepare" and j.dataset.name == "cxr")
    prepare.execute()
    assert prepare.is_done()
    # Once its cache is prepared, a dataset's raw data is not needed any more.
    root.rename(tmp_path / "archived")
    check_data_roots(lenient, source=str(path))
    # A synthetic dataset's root is never checked: the sweep writes its data under out.
    check_data_roots(from_dict(SweepConfig, {"name": "s", "datasets": [{"name": "a", "kind": "aptos",
                     "root": "/nowhere", "synthetic": {"n": 20}}], "attacks": [{"attack": "none"}]}))  # fmt: skip


def test_ignore_unknown_is_a_typed_field_outside_the_cache_name() -> None:
    plain = {"name": "cxr", "kind": "cxr", "root": "/data"}
    assert from_dict(DatasetSpec, plain).ignore_unknown is False
    lenient = from_dict(DatasetSpec, {**plain, "ignore_unknown": True})
    assert lenient.ignore_unknown is True
    assert config_hash(lenient, 8) == config_hash(from_dict(DatasetSpec, plain), 8)  # the same cache
    with pytest.raises(ConfigError, match=r"sweep\.yaml: ignore_unknown: expected true or false, got str 'yes'"):
        from_dict(DatasetSpec, {**plain, "ignore_unknown": "yes"}, source="sweep.yaml")


# --- a job that ended without a result --------------------------------------------------------


def ended_job(folder: Path, state: str, stderr: str | None) -> Any:
    """A submitit job that ended without writing its result, as submitit itself reports it:
    the real ``Job.exception()`` formats the message; only the scheduler's answer is fixed."""
    from submitit.core.core import Job

    class EndedJob(Job[Any]):
        _results_timeout_s = 0  # no grace for a slow file system

        @property
        def state(self) -> str:
            return state

        def done(self, force_check: bool = False) -> bool:
            return True

    folder.mkdir(parents=True, exist_ok=True)
    job = EndedJob(folder, "4242")
    if stderr is not None:
        job.paths.stderr.write_text(stderr)
    return job


SLURM_CANCELLED = (
    "2026-12-01 10:00:00,000 INFO medhpc.train.loop: epoch 3/200\n"
    "slurmstepd: error: *** JOB 4242 ON node07 CANCELLED AT 2026-12-01T10:00:01 ***\n"
)


@pytest.mark.parametrize(
    ("state", "stderr", "expected"),
    [
        ("CANCELLED", SLURM_CANCELLED,
         "job has not produced any output (state: CANCELLED): JOB 4242 ON node07 CANCELLED AT 2026-12-01T10:00:01"),
        ("OUT_OF_MEMORY", "Traceback (most recent call last):\n  File \"x.py\", line 1\nMemoryError\n",
         "job has not produced any output (state: OUT_OF_MEMORY): MemoryError"),
        ("NODE_FAIL", None, "job has not produced any output (state: NODE_FAIL)"),
    ],
)  # fmt: skip
def test_a_job_without_output_keeps_submitits_reason_and_state(
    tmp_path: Path, state: str, stderr: str | None, expected: str
) -> None:
    pytest.importorskip("submitit", reason="submitit not installed (a test extra, requirements-pinned.txt)")
    error = ended_job(tmp_path / "submitit", state, stderr).exception()
    assert f"has not produced any output (state: {state})" in str(error)  # submitit's own words
    assert _summary(error) == expected


def test_a_failed_jobs_summary_is_its_exception_line() -> None:
    error = RuntimeError(
        "Job (task=0) failed during processing with trace:\n----------------------\n"
        "Traceback (most recent call last):\n  File \"jobs.py\", line 86\n"
        "medhpc.data.errors.DataError: chest X-ray folder does not exist: /data/x\n"
        "----------------------\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n"
        "  - /out/submitit/prepare/1_0_log.err\n  - /out/submitit/prepare/1_0_log.out"
    )
    assert _summary(error) == "medhpc.data.errors.DataError: chest X-ray folder does not exist: /data/x"
    assert _summary(None) == "finished without its output"
