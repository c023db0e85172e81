"""Checkpoints that resume exactly: weights, optimiser, schedule, scaler, RNG states, progress.

Written atomically at the end of every epoch and read with ``weights_only=True`` (no pickled
code runs at load): everything in them is tensors and plain Python. They are read onto the
CPU (``map_location="cpu"``): the RNG states must stay host byte tensors, and
``load_state_dict`` moves weights and optimiser state to where the model is. Reading a kept model
(``best.pt``) is the models' concern: :mod:`medhpc.models.checkpoint`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medhpc import __version__, atomic
from medhpc.models.checkpoint import BEST, FORMAT, CheckpointError, load, resolve
from medhpc.train import runtime

log = logging.getLogger(__name__)

LAST = "last.pt"


@dataclass
class Progress:
    """Where a run stands after ``epoch`` completed epochs."""

    epoch: int = 0
    best_val_loss: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The CPU generator's state and, on CUDA, every visible GPU's and the run device's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        if device is not None and device.type == "cuda":
            state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def _host_bytes(value: Any, what: str) -> torch.Tensor:
    # torch's setters take CPU uint8 tensors only; a state loaded onto a GPU is moved back.
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
        raise CheckpointError(f"{what} RNG state is not a uint8 tensor: {type(value).__name__}")
    return value if value.device.type == "cpu" else value.cpu()


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore the states :func:`rng_state` saved; resuming on CUDA needs the CUDA state (a
    checkpoint without one would continue a different random stream: an error)."""
    torch.set_rng_state(_host_bytes(state["torch"], "the CPU"))
    if device is None or device.type != "cuda":
        return
    if state.get("cuda_device") is not None:
        torch.cuda.set_rng_state(_host_bytes(state["cuda_device"], "the CUDA"), device)
        return
    cuda = state.get("cuda")
    if not cuda:
        raise CheckpointError(
            "the checkpoint holds no CUDA RNG state (written where no GPU was visible): "
            "resuming on cuda would not continue the run's random stream"
        )
    if len(cuda) != torch.cuda.device_count():
        raise CheckpointError(
            f"the checkpoint holds CUDA RNG states of {len(cuda)} GPUs, {torch.cuda.device_count()} are visible: "
            "cannot tell which one the run used"
        )
    torch.cuda.set_rng_state_all([_host_bytes(c, "a CUDA") for c in cuda])


def check_runtime(ckpt: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a run on another device type or at another precision than it started.

    ``current`` is :func:`medhpc.train.runtime.describe` of this run. Checkpoints from before
    this was recorded have no ``runtime``: they resume, with a warning (nothing to compare)."""
    saved = ckpt.get("runtime")
    if saved is None:
        log.warning(
            "%s records no device or precision (written by an older medhpc): resuming on %s unchecked",
            path, runtime.render(current),
        )  # fmt: skip
        return
    if saved != current:
        raise CheckpointError(
            f"{path} was written on {runtime.render(saved)}; this run is on {runtime.render(current)}: "
            "resuming would not continue the same computation. Resume with the device, precision and tf32 "
            f"it started with, or remove {path} to start over"
        )


def _header(model: nn.Module, config: dict[str, Any], config_hash: str) -> dict[str, Any]:
    """What every checkpoint starts with: its format, the writer, the run's config, the weights."""
    return {
        "format": FORMAT,
        "medhpc_version": __version__,
        "config": config,
        "config_hash": config_hash,
        "model": model.state_dict(),
    }


def save(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    progress: Progress,
    config: dict[str, Any],
    config_hash: str,
    device: torch.device,
    numerics: dict[str, Any],
) -> None:
    """``last.pt``: everything to resume exactly, and ``numerics`` (:func:`runtime.describe`)
    that a resume must match (:func:`check_runtime`)."""
    atomic.save_torch(
        {
            **_header(model, config, config_hash),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(device),
            "runtime": numerics,
            "progress": asdict(progress),
        },
        path,
    )


def save_weights(
    path: Path, *, model: nn.Module, config: dict[str, Any], config_hash: str, epoch: int, val_loss: float
) -> None:
    """The kept model: weights and the config that builds it, nothing to resume."""
    atomic.save_torch(
        {
            **_header(model, config, config_hash),
            "epoch": epoch,
            "val_loss": val_loss,
        },
        path,
    )


__all__ = ["BEST", "FORMAT", "LAST", "CheckpointError", "Progress", "check_runtime", "load", "resolve", "save",
           "save_weights", "rng_state", "set_rng_state"]  # fmt: skip
