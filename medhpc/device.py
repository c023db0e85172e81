"""Which device a job runs on: shared by training, attacks, evaluation and the sweep's jobs."""

from __future__ import annotations

import torch

from medhpc.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first GPU when one is visible, else the CPU; a CUDA device asked for on
    a machine without one is an error, not a silent fall-back (it would run 100x slower)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but no CUDA device is visible")
    return device
