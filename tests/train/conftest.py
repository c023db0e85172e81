"""A small prepared synthetic cache shared by the training tests (read-only)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from medhpc.data import make_synthetic


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
