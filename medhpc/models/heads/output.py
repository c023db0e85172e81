"""What every head returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadOutput:
    """``logits`` (B, classes) as the model predicts; ``kl`` (B,) for the VIB head; ``samples``
    (S, B, classes) the per-draw logits of a stochastic head at evaluation."""

    logits: torch.Tensor
    kl: torch.Tensor | None = None
    samples: torch.Tensor | None = None
