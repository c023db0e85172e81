"""Soft attention (Datta et al. 2021, as used by Wasserman 2022) on the last feature map, with
the pooled-concat classifier; its map A is drawn beside Grad-CAM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from medhpc.config import bad
from medhpc.models.heads.output import HeadOutput
from medhpc.models.spec import HeadSpec

if TYPE_CHECKING:
    from medhpc.models.config import ModelConfig


@dataclass(frozen=True)
class AttentionConfig:
    """Soft attention (Datta et al. 2021, as used by Wasserman 2022).

    ``learn_gamma=False`` fixes γ = 1, as the reference Keras code effectively did.
    """

    maps: int = 16
    learn_gamma: bool = True
    dropout: float = 0.5

    def _check(self) -> None:
        if self.maps < 1:
            raise bad("maps", f"must be >= 1, got {self.maps}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1), got {self.dropout}")


class SoftAttentionHead(nn.Module):
    """Soft attention on the last feature map, then the pooled-concat classifier.

    K maps from a 3x3 convolution, ReLU, softmax over the H*W positions of each map, summed
    into A; attended features f = gamma * t * A. Both t and f are max-pooled 2x2 (rounding up
    on maps smaller than 2x2, which small test images produce), concatenated, ReLU, dropout,
    global-average-pooled and classified by a linear layer (2C -> classes).
    """

    def __init__(self, channels: int, classes: int, cfg: AttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Conv2d(channels, cfg.maps, kernel_size=3, padding=1)
        if cfg.learn_gamma:
            self.gamma = nn.Parameter(torch.ones(()))
        else:
            self.register_buffer("gamma", torch.ones(()), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(2 * channels, classes)

    def maps(self, t: torch.Tensor) -> torch.Tensor:
        """The K softmax-normalised attention maps (B, K, H, W); each sums to 1."""
        m = F.relu(self.conv(t))
        return F.softmax(m.flatten(2), dim=-1).view_as(m)

    def attention(self, t: torch.Tensor) -> torch.Tensor:
        """A = the sum of the K maps (B, 1, H, W), what multiplies the features."""
        return self.maps(t).sum(1, keepdim=True)

    def forward(self, t: torch.Tensor) -> HeadOutput:
        f = self.gamma * t * self.attention(t)
        ceil = min(t.shape[-2:]) < 2
        pooled = torch.cat(
            (F.max_pool2d(t, 2, ceil_mode=ceil), F.max_pool2d(f, 2, ceil_mode=ceil)), dim=1
        )
        h = torch.flatten(F.adaptive_avg_pool2d(self.dropout(F.relu(pooled)), 1), 1)
        return HeadOutput(self.fc(h))


def _build(channels: int, cfg: ModelConfig) -> nn.Module:
    assert cfg.attention is not None  # filled by ModelConfig for this head
    return SoftAttentionHead(channels, cfg.classes, cfg.attention)


SPEC = HeadSpec("attention", "attention", _build, settings=AttentionConfig, own_map=True, needs_map=True)
