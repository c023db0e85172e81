"""The Variational Information Bottleneck head (Alemi et al. 2016; Häkkinen & Raj §5.2): a
stochastic head whose loss adds β · KL, swept over β on a base model's frozen backbone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from medhpc.config import bad
from medhpc.models.heads.output import HeadOutput
from medhpc.models.noise import NoiseSource
from medhpc.models.spec import HeadSpec, SweepAxis
from medhpc.ops import vib_reparam

if TYPE_CHECKING:
    from medhpc.models.config import ModelConfig


@dataclass(frozen=True)
class VIBConfig:
    """Variational Information Bottleneck head (Alemi et al. 2016; Häkkinen & Raj §5.2).

    ``kl_reduction="mean"`` averages the KL over the latent dimensions as Häkkinen's scripts
    did, so the paper's β grid means what it meant there (Alemi sums: β/latent of theirs).
    ``average`` is how the ``eval_samples`` draws combine at evaluation: mean logits (the
    scripts) or mean probabilities (Alemi). ``relu`` is the scripts' σ = softplus(ReLU(a) − 5).
    """

    latent: int = 256
    beta: float = 1e-3
    relu: bool = True
    kl_reduction: Literal["sum", "mean"] = "mean"
    eval_samples: int = 12
    average: Literal["logits", "probs"] = "logits"

    def _check(self) -> None:
        if self.latent < 1:
            raise bad("latent", f"must be a positive number of dimensions, got {self.latent}")
        if not self.beta >= 0.0:
            raise bad("beta", f"must be >= 0, got {self.beta}")
        if self.eval_samples < 1:
            raise bad("eval_samples", f"must be >= 1, got {self.eval_samples}")


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
        return vib_reparam(
            mu, a, samples, seed=seed, relu=self.cfg.relu, kl_reduction=self.cfg.kl_reduction,
            share_rows=share,
        )  # fmt: skip

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


def _build(channels: int, cfg: ModelConfig) -> nn.Module:
    assert cfg.vib is not None  # filled by ModelConfig for this head
    return VIBHead(channels, cfg.classes, cfg.vib)


SPEC = HeadSpec(
    "vib", "VIB", _build, settings=VIBConfig, stochastic=True,
    samples=lambda s: s.eval_samples, kl_weight=lambda s: s.beta,
    axis=SweepAxis(field="beta", grid="betas", symbol="β"), on_base=True, pooled=True,
)  # fmt: skip
