"""Checkpoints that resume exactly: weights, optimiser, schedule, scaler, RNG states, progress.

Written atomically at the end of every epoch and read with ``weights_only=True`` (no pickled
code runs at load): everything in them is tensors and plain Python. Reading a kept model
(``best.pt``) is the models' concern: :mod:`medhpc.models.checkpoint`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medhpc import __version__, atomic
from medhpc.models.checkpoint import BEST, FORMAT, CheckpointError, load, resolve

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


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


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
) -> None:
    atomic.save_torch(
        {
            **_header(model, config, config_hash),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
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


__all__ = ["BEST", "FORMAT", "LAST", "CheckpointError", "Progress", "load", "resolve", "save", "save_weights",
           "rng_state", "set_rng_state"]  # fmt: skip
