"""Read what training wrote: a checkpoint file, and the kept model of a run rebuilt from it.

Training (:mod:`medhpc.train.checkpoint`) writes; everything downstream (attacks, shards,
maps) only reads, through here, so that a model is rebuilt the same way everywhere.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medhpc.config import ConfigError, from_dict
from medhpc.errors import MedhpcError
from medhpc.models.classifier import build_model
from medhpc.models.config import ModelConfig

#: Layout version of medhpc's checkpoints.
FORMAT = 1
#: The kept model of a run folder: the lowest validation loss.
BEST = "best.pt"


class CheckpointError(MedhpcError):
    """A checkpoint that cannot be read or does not belong to this run."""


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
