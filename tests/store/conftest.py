"""Shards and models shared by the store tests.

* ``make_arrays(start, n)``: a valid, random field mapping for images ``[start, start+n)``;
* ``meta(start)``: the :class:`ShardMeta` of one test set (set hash ``5e7``);
* ``shard_set``: a folder with a complete set of four conventionally named shards;
* ``tiny_model``: a small deterministic CNN (eval mode); ``vib_model``: a real ResNet50 with
  the stochastic VIB head at 32 px.

(The project runs pytest with ``--import-mode=importlib``: tests share these through fixtures.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medhpc.attacks.config import AttackConfig
from medhpc.models import ModelConfig, VIBConfig, build_model
from medhpc.store import ShardMeta, shard_filename, write_shard

SET_HASH = "5e7"
ATTACK = AttackConfig("pgd", eps=0.02, steps=3)


def arrays_for(
    start: int, n: int, *, classes: int = 2, samples: int = 0, const: bool = False, size: int = 8, seed: int = 0
) -> dict[str, Any]:
    rng = np.random.default_rng([seed, start, n])
    probs = rng.dirichlet(np.ones(classes), size=n).astype(np.float32)
    out: dict[str, Any] = {
        "x_adv": rng.random((n, 3, size, size), dtype=np.float32),
        "index": np.arange(start, start + n),
        "ids": [f"img-{i:04d}-é" for i in range(start, start + n)],
        "labels": rng.integers(0, classes, n),
        "attack_labels": rng.integers(0, classes, n),
        "clean_pred": probs.argmax(1),
        "adv_pred": rng.integers(0, classes, n),
        "clean_probs": probs,
        "adv_probs": rng.dirichlet(np.ones(classes), size=n).astype(np.float32),
        "l2": rng.random(n, dtype=np.float32),
        "linf": rng.random(n, dtype=np.float32) * 0.02,
        "success": rng.random(n) < 0.5,
    }
    if const:
        c = rng.random(n).astype(np.float32)
        c[0] = np.nan
        out["const"] = c
    if samples:
        out["clean_sample_probs"] = rng.dirichlet(np.ones(classes), size=(samples, n)).astype(np.float32)
        out["adv_sample_probs"] = rng.dirichlet(np.ones(classes), size=(samples, n)).astype(np.float32)
    return out


def meta_for(start: int, **kw: Any) -> ShardMeta:
    defaults: dict[str, Any] = {
        "attack": ATTACK, "split": "test", "start": start, "model_hash": "model01", "run": "runs/m1",
        "dataset": "cache.h5", "seed": 7, "config_hash": SET_HASH, "set_size": 20,
    }  # fmt: skip
    defaults.update(kw)
    return ShardMeta(**defaults)


@pytest.fixture
def make_arrays() -> Callable[..., dict[str, Any]]:
    return arrays_for


@pytest.fixture
def meta() -> Callable[..., ShardMeta]:
    return meta_for


@dataclass(frozen=True)
class ShardSet:
    """A folder holding one complete set: 4 shards of 5 images, [0, 20)."""

    folder: Path
    paths: list[Path]
    arrays: list[dict[str, Any]]


@pytest.fixture
def shard_set(tmp_path: Path) -> ShardSet:
    folder = tmp_path / "shards"
    folder.mkdir()
    paths, arrays = [], []
    for start in range(0, 20, 5):
        data = arrays_for(start, 5)
        path = folder / shard_filename(SET_HASH, start, start + 5)
        write_shard(path, data, meta_for(start))
        paths.append(path)
        arrays.append(data)
    return ShardSet(folder, paths, arrays)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).amax(dim=(2, 3)))


@pytest.fixture(scope="session")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture(scope="session")
def vib_model() -> nn.Module:
    """ResNet50 + VIB head averaging the probabilities of its 12 draws."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet50", head="vib", vib=VIBConfig(latent=16, eval_samples=12, average="probs"))
    return build_model(cfg).eval()
