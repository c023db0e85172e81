"""Classification heads over a backbone's last feature map (B, C, H, W).

Each head returns a :class:`HeadOutput`. Only the VIB head is stochastic and has a KL term;
the attention head exposes its maps for Grad-CAM-style figures (:meth:`SoftAttentionHead.maps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medhpc.models.config import AttentionConfig, VIBConfig
from medhpc.models.noise import NoiseSource
from medhpc.ops import reference, vib_reparam


@dataclass
class HeadOutput:
    """``logits`` (B, classes) as the model predicts; ``kl`` (B,) for the VIB head; ``samples``
    (S, B, classes) the per-draw logits of a stochastic head at evaluation."""

    logits: torch.Tensor
    kl: torch.Tensor | None = None
    samples: torch.Tensor | None = None


class LinearHead(nn.Module):
    """Global average pooling, optional dropout, a linear layer: the backbones' own head."""

    def __init__(self, channels: int, classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, classes)

    def forward(self, t: torch.Tensor) -> HeadOutput:
        return HeadOutput(self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(t, 1), 1))))


class VIBHead(nn.Module):
    """h -> (mu, a) -> z = mu + softplus(r - 5) * eps -> linear decoder; KL to N(0, I).

    Training draws one sample per example; evaluation averages ``eval_samples`` draws (their
    logits or their probabilities, per the config). Sampling uses the fused
    ``medhpc.ops.vib_reparam`` (its reference where no kernel is compiled), which regenerates
    the noise in the backward pass instead of storing it.
    """

    def __init__(self, channels: int, classes: int, cfg: VIBConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mu = nn.Linear(channels, cfg.latent)
        self.a = nn.Linear(channels, cfg.latent)
        self.decoder = nn.Linear(cfg.latent, classes)
        for layer in (self.mu, self.a):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.noise = NoiseSource()

    def encode(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.flatten(F.adaptive_avg_pool2d(t, 1), 1)
        return self.mu(h), self.a(h)

    def sample(self, mu: torch.Tensor, a: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` (S, B, latent) and the per-example KL (B,) under the noise source's next seed."""
        seed, share = self.noise.next()
        if mu.device.type != "cuda" and mu.dtype in (torch.float16, torch.bfloat16):
            mu, a = mu.float(), a.float()  # CPU autocast: the CPU kernel is fp32/fp64 only
        if share == 1:
            return vib_reparam(
                mu, a, samples, seed=seed, relu=self.cfg.relu, kl_reduction=self.cfg.kl_reduction
            )
        # Rows b and b' share noise iff b // share == b' // share: give them one position.
        s, b, k = samples, mu.shape[0], mu.shape[1]
        groups = -(-b // share)
        dev = mu.device
        row = torch.arange(b, device=dev) // share
        index = (
            torch.arange(s, device=dev).view(s, 1, 1) * groups + row.view(1, b, 1)
        ) * k + torch.arange(k, device=dev).view(1, 1, k)
        return reference.vib_reparam_at(
            mu, a, index, seed, 0, self.cfg.relu, self.cfg.kl_reduction == "mean"
        )

    def combine(self, per_sample: torch.Tensor) -> torch.Tensor:
        """Combine (S, B, C) per-draw logits into the prediction's logits (B, C)."""
        if per_sample.shape[0] == 1:
            return per_sample[0]
        if self.cfg.average == "logits":
            return per_sample.mean(0)
        # Mean probability, returned as log-probabilities so softmax gives it back.
        return torch.logsumexp(F.log_softmax(per_sample, -1), 0) - math.log(per_sample.shape[0])

    def forward(self, t: torch.Tensor, samples: int | None = None) -> HeadOutput:
        mu, a = self.encode(t)
        if samples is None:
            samples = 1 if self.training else self.cfg.eval_samples
        z, kl = self.sample(mu, a, samples)
        per_sample = self.decoder(z)
        return HeadOutput(self.combine(per_sample), kl, per_sample)

    def expected_logits(self, t: torch.Tensor) -> torch.Tensor:
        """Noise-free logits W_d mu + b_d (the decoder is linear): the path for Grad-CAM."""
        return self.decoder(self.encode(t)[0])


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
