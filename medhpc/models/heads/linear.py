"""The linear head: global average pooling and one layer, the backbones' own head (the base model)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from medhpc.models.heads.output import HeadOutput
from medhpc.models.spec import HeadSpec

if TYPE_CHECKING:
    from medhpc.models.config import ModelConfig


class LinearHead(nn.Module):
    """Global average pooling, optional dropout, a linear layer: the backbones' own head."""

    def __init__(self, channels: int, classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, classes)

    def forward(self, t: torch.Tensor) -> HeadOutput:
        return HeadOutput(self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(t, 1), 1))))


def _build(channels: int, cfg: ModelConfig) -> nn.Module:
    return LinearHead(channels, cfg.classes, cfg.dropout)


SPEC = HeadSpec("linear", "linear", _build, base=True, pooled=True)
