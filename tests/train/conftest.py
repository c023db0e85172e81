"""Prepared caches shared by the training tests (read-only), and a tiny test architecture."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medhpc.data import make_synthetic
from medhpc.models import registry
from medhpc.models.spec import ArchSpec


def make_cache(root: Path, kind: str, n: int, size: int, contrast: float | None = None) -> Path:
    prepare = importlib.import_module("medhpc.data.prepare").prepare
    make_synthetic(kind, root / kind, n=n, size=size, seed=0, lesion_contrast=contrast)
    out = root / f"{kind}-{size}.h5"
    prepare(kind, root / kind, out, size=size, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 synthetic fundus images at 32 px: enough for plumbing, not for learning."""
    return make_cache(tmp_path_factory.mktemp("tiny"), "aptos", 120, 32)


@pytest.fixture(scope="session")
def learnable_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 synthetic fundus images at 48 px with doubled lesion contrast (see test_learning)."""
    return make_cache(tmp_path_factory.mktemp("learn"), "aptos", 600, 48, contrast=2.0)


class TinyTrunk(torch.nn.Module):
    """Two conv-BatchNorm-ReLU layers and a global max-pool: a trunk that trains in seconds."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.features(x), None


TINY = ArchSpec("tiny", build=lambda classes, aux: TinyTrunk(), channels=16, min_size=16, input_size=16,
                cam_layer="features", imagenet=lambda: None)  # type: ignore[arg-type,return-value]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_arch() -> Iterator[str]:
    """A test-only architecture ``tiny`` in the registry (this process, for one test module),
    for runs whose proof needs many epochs: the whole loop, Classifier and heads, a tiny trunk."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.ARCHS, TINY.name, TINY)
        yield TINY.name


def blob_images(n: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The attack tests' images (tests/attacks/conftest.py): smooth backgrounds in [0.1, 0.7],
    label 1 adds a bright Gaussian blob (+0.35, radius ~2 px) at a random place."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = 0.1 + 0.6 * torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    centre = 3 + torch.rand(n, 2, generator=g) * (size - 6)
    grid = torch.arange(size, dtype=torch.float32)
    d2 = (grid.view(1, size, 1) - centre[:, 0].view(n, 1, 1)) ** 2
    d2 = d2 + (grid.view(1, 1, size) - centre[:, 1].view(n, 1, 1)) ** 2
    x = x + 0.35 * torch.exp(-d2 / 8.0).unsqueeze(1) * y.view(n, 1, 1, 1)
    return x.clamp(0, 1), y


@pytest.fixture(scope="session")
def blob_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 blob images at 16 px written as PNG class folders and prepared into a cache (the
    generic folder reader): 480 train / 30 val / 90 test."""
    from PIL import Image

    prepare = importlib.import_module("medhpc.data.prepare").prepare
    root = tmp_path_factory.mktemp("blobs")
    x, y = blob_images(600, seed=1, size=16)
    for i in range(len(y)):
        folder = root / "images" / ("pos" if y[i] else "neg")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i].permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{i:04d}.png")
    out = root / "blobs-16.h5"
    prepare("folder", root / "images", out, size=16, seed=0, workers=0, progress=False)
    return out
