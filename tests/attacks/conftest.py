"""Models and data shared by the attack tests.

* ``trained``: a small CNN trained in a few seconds on deterministic, learnable 16x16 images
  (positives carry a bright blob at a random place), with a held-out batch it classifies
  almost perfectly: the "trained model" of the ε-sweep, CW and SPSA comparisons.
* ``resnet`` / ``vib``: real :class:`medhpc.models.Classifier` models (ResNet50 at 32 px, the
  linear and the stochastic VIB head), untrained, in eval mode.

(The project runs pytest with ``--import-mode=importlib``: tests share these through fixtures.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from medhpc.models import Classifier, ModelConfig, build_model


def blob_images(n: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random backgrounds in [0.1, 0.9]; label 1 adds a bright Gaussian blob (radius
    ~2 px, +0.35 on every channel) at a random place. Balanced labels, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    x = 0.1 + 0.6 * x
    centre = 3 + torch.rand(n, 2, generator=g) * (size - 6)
    grid = torch.arange(size, dtype=torch.float32)
    d2 = (grid.view(1, size, 1) - centre[:, 0].view(n, 1, 1)) ** 2 + (
        grid.view(1, 1, size) - centre[:, 1].view(n, 1, 1)
    ) ** 2
    blob = torch.exp(-d2 / (2 * 2.0**2)).unsqueeze(1)
    x = x + 0.35 * blob * y.view(n, 1, 1, 1)
    return x.clamp(0, 1), y


class SmallCNN(nn.Module):
    """Two small conv layers and a linear layer (~0.13 M multiply-adds per 16x16 image)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@pytest.fixture(scope="session")
def blobs() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """:func:`blob_images` for test modules (conftest is not importable under importlib mode)."""
    return blob_images


@dataclass(frozen=True)
class Trained:
    model: nn.Module
    x: torch.Tensor  # held-out images
    y: torch.Tensor
    clean_accuracy: float


@pytest.fixture(scope="session")
def trained() -> Trained:
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = blob_images(1024, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(300):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    xt, yt = blob_images(64, seed=3)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    return Trained(model, xt, yt, acc)


def _classifier(head: str) -> Classifier:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="resnet50", head=head)).eval()


@pytest.fixture(scope="session")
def resnet() -> Classifier:
    return _classifier("linear")


@pytest.fixture(scope="session")
def vib() -> Classifier:
    return _classifier("vib")


@pytest.fixture(scope="session")
def images32() -> torch.Tensor:
    """Four 32x32 RGB images in [0, 1] with some pixels at the bounds (clipping matters)."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(4, 3, 32, 32, generator=g)
    x[:, :, :4] = 0.0
    x[:, :, -4:] = 1.0
    return x
