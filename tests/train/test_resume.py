"""Resuming a run: on the device and at the precision it started with, RNG states from the host."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from medhpc.config import ConfigError
from medhpc.train import from_mapping, loop, runtime, train
from medhpc.train.checkpoint import CheckpointError, rng_state, set_rng_state
from medhpc.train.checkpoint import load as load_ckpt


def config(cache: Path, out: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": {"arch": "resnet50", "head": "linear"},
        "data": {"cache": str(cache)},
        "optim": {"name": "adam", "lr": 1e-3},
        "epochs": 1,
        "batch_size": 16,
        "out": str(out),
        **extra,
    }


@pytest.fixture(scope="module")
def finished(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(from_mapping(config(tiny_cache, tmp_path_factory.mktemp("runs"))), progress=False)


@pytest.fixture
def one_epoch(finished: Path, tmp_path: Path) -> Path:
    """A copy of a run killed after its last epoch's checkpoint, before ``metrics.json``: it resumes."""
    run = tmp_path / finished.name
    shutil.copytree(finished, run)
    (run / "metrics.json").unlink()
    return run


def rewrite(path: Path, **fields: Any) -> dict[str, Any]:
    ckpt = load_ckpt(path)
    for key, value in fields.items():
        ckpt[key] = {**ckpt.get(key, {}), **value} if isinstance(value, dict) else value
    torch.save(ckpt, path)
    return ckpt


@pytest.mark.filterwarnings("ignore:.*to a meta parameter:UserWarning")
def test_a_run_resumed_off_the_host_restores_its_rng_state(
    one_epoch: Path, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU, ``map_location=device`` put the saved CPU RNG state on the GPU and
    ``torch.set_rng_state`` refused it (TypeError: RNG state must be a torch.ByteTensor).
    The meta device stands in for the GPU: anything loaded onto it is not a host tensor."""
    ckpt = rewrite(one_epoch / "last.pt", runtime={"device": "meta"})  # written on that device
    monkeypatch.setattr(loop, "resolve_device", lambda name: torch.device("meta"))
    seen: dict[str, Any] = {}

    def finish(*args: Any) -> Path:  # stop before evaluating (nothing computes on meta)
        seen["rng"], seen["progress"] = torch.get_rng_state(), args[9]
        return Path(args[1])

    monkeypatch.setattr(loop, "_finish", finish)
    train(from_mapping(config(tiny_cache, one_epoch.parent)), progress=False)
    assert seen["progress"].epoch == 1
    assert torch.equal(seen["rng"], ckpt["rng"]["torch"])


def test_a_checkpoint_records_device_and_precision(one_epoch: Path) -> None:
    assert load_ckpt(one_epoch / "last.pt")["runtime"] == {"device": "cpu", "precision": "fp32", "tf32": False}


def test_a_run_started_on_cuda_is_not_resumed_on_the_cpu(one_epoch: Path, tiny_cache: Path) -> None:
    rewrite(one_epoch / "last.pt", runtime={"device": "cuda", "precision": "bf16"})
    before = (one_epoch / "last.pt").read_bytes()
    message = r"last\.pt was written on cuda, bf16 autocast, TF32 off; this run is on cpu, fp32"
    with pytest.raises(CheckpointError, match=message):
        train(from_mapping(config(tiny_cache, one_epoch.parent)), progress=False)
    assert (one_epoch / "last.pt").read_bytes() == before  # nothing overwritten


def test_a_run_is_not_resumed_at_another_precision(one_epoch: Path, tiny_cache: Path) -> None:
    """precision is not part of the run's name (hash): the same folder, so it must be checked."""
    with pytest.raises(CheckpointError, match=r"written on cpu, fp32; this run is on cpu, bf16 autocast"):
        train(from_mapping(config(tiny_cache, one_epoch.parent, precision="bf16")), progress=False)


def test_an_old_checkpoint_without_runtime_resumes_with_a_warning(
    one_epoch: Path, tiny_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = load_ckpt(one_epoch / "last.pt")
    del ckpt["runtime"]
    torch.save(ckpt, one_epoch / "last.pt")
    with caplog.at_level(logging.WARNING, logger="medhpc.train"):
        train(from_mapping(config(tiny_cache, one_epoch.parent)), progress=False)
    assert "records no device or precision (written by an older medhpc): resuming on cpu, fp32 unchecked" in caplog.text
    assert (one_epoch / "metrics.json").is_file()


def test_resuming_on_cuda_without_a_cuda_rng_state_is_an_error() -> None:
    state = rng_state()
    state.pop("cuda", None)
    with pytest.raises(CheckpointError, match="holds no CUDA RNG state .* would not continue the run's random stream"):
        set_rng_state(state, torch.device("cuda"))
    set_rng_state(state, torch.device("cpu"))  # on the CPU it is not needed


def test_an_rng_state_that_is_not_bytes_is_named() -> None:
    with pytest.raises(CheckpointError, match="the CPU RNG state is not a uint8 tensor: float"):
        set_rng_state({"torch": 1.0})


def test_deterministic_raises_on_a_nondeterministic_op_and_is_undone_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    with runtime.numerics(torch.device("cpu"), tf32=False, deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
            torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))  # an error, not a warning
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


@pytest.mark.parametrize(("value", "kept"), [(":16:8", True), (":4096:8", True), (":0:0", False), ("", False)])
def test_cublas_workspace_config_is_kept_only_when_deterministic(
    value: str, kept: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", value)
    runtime.ensure_cublas_workspace_config()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == (value if kept else ":4096:8")
    assert ("is not deterministic" in caplog.text) is not kept


def test_deterministic_training_runs_on_the_cpu(tiny_cache: Path, tmp_path: Path) -> None:
    """No op of a training step lacks a deterministic CPU kernel (they raise now, not warn)."""
    run = train(from_mapping(config(tiny_cache, tmp_path, deterministic=True)), progress=False)
    assert (run / "metrics.json").is_file()
    assert not torch.are_deterministic_algorithms_enabled()  # the next job in this process is unaffected


def test_tf32_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="tf32: expected true or false, got str 'yes'"):
        from_mapping(config(Path("c.h5"), Path("runs"), tf32="yes"))
