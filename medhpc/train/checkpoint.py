"""Checkpoints that resume exactly: weights, optimiser, schedule, scaler, RNG states, progress.

Written atomically at the end of every epoch and read with ``weights_only=True`` (no pickled
code runs at load): everything in them is tensors and plain Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medhpc import __version__, atomic
from medhpc.errors import MedhpcError

FORMAT = 1
LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(MedhpcError):
    """A checkpoint that cannot be read or does not belong to this run."""


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
            "format": FORMAT,
            "medhpc_version": __version__,
            "config": config,
            "config_hash": config_hash,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "progress": asdict(progress),
        },
        path,
    )


def save_weights(path: Path, *, model: nn.Module, config: dict[str, Any], config_hash: str, epoch: int, val_loss: float) -> None:
    """The kept model: weights and the config that builds it, nothing to resume."""
    atomic.save_torch(
        {
            "format": FORMAT,
            "medhpc_version": __version__,
            "config": config,
            "config_hash": config_hash,
            "model": model.state_dict(),
            "epoch": epoch,
            "val_loss": val_loss,
        },
        path,
    )


def load(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint does not exist: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, unsafe pickle: all unreadable
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a medhpc checkpoint (format {FORMAT})")
    return ckpt


def resolve(path: Path | str) -> Path:
    """A run folder means its kept model (``best.pt``); a file means itself."""
    path = Path(path)
    return path / BEST if path.is_dir() else path


def load_model(source: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The kept model of a run (folder or checkpoint file), in eval mode, and its run config.

    The architecture is rebuilt from the config stored in the checkpoint, with
    ``weights: none`` (the checkpoint's weights replace any initial weights, so an ImageNet
    file need not be present where the model is attacked).
    """
    from dataclasses import replace

    from medhpc.config import ConfigError, from_dict
    from medhpc.models import ModelConfig, build_model

    path = resolve(source)
    ckpt = load(path, map_location="cpu")
    try:
        cfg = from_dict(ModelConfig, ckpt["config"]["model"], source=str(path))
    except (KeyError, TypeError):
        raise CheckpointError(f"{path} holds no model config") from None
    except ConfigError as exc:
        raise CheckpointError(f"{path}: stored model config is not valid here: {exc}") from None
    model = build_model(replace(cfg, weights="none"))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt["config"]
