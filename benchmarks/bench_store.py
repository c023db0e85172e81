"""Shard write and read speed on this CPU: MB/s written, images/s read, verify MB/s.

Run with::

    .venv/bin/python -m pytest benchmarks/bench_store.py --benchmark-only -p no:cacheprovider

The images are what a shard really holds: smooth 224 px images (low-frequency noise, as the
synthetic data) plus an L∞ sign perturbation of ε = 0.02, clipped to [0, 1], 128 per shard.
Random pixels would not compress at all; a smooth image does a little, its float32 mantissa
noise little more. ``extra_info`` has ``mb_per_s`` (uncompressed image bytes / mean time),
``images_per_s`` and ``ratio`` (file size / uncompressed image bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medhpc.attacks.config import AttackConfig
from medhpc.store import ShardMeta, ShardReader, verify_dir, write_shard

N = 128
SIZE = 224
BATCH = 32


def _arrays(n: int = N, size: int = SIZE) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(size, size), mode="bilinear")
    sign = torch.randint(0, 2, (n, 3, size, size), generator=g).float() * 2 - 1
    x_adv = (0.1 + 0.8 * smooth + 0.02 * sign).clamp(0, 1)
    probs = torch.full((n, 2), 0.5)
    return {
        "x_adv": x_adv, "index": np.arange(n), "ids": [f"img{i:05d}" for i in range(n)],
        "labels": np.zeros(n, np.int64), "attack_labels": np.zeros(n, np.int64),
        "clean_pred": np.zeros(n, np.int64), "adv_pred": np.ones(n, np.int64),
        "clean_probs": probs, "adv_probs": probs, "l2": np.ones(n, np.float32), "linf": np.full(n, 0.02, np.float32),
        "success": np.ones(n, bool),
    }  # fmt: skip


def _meta() -> ShardMeta:
    return ShardMeta(AttackConfig("fgsm", eps=0.02), "test", 0, model_hash="bench", config_hash="be7c4")


@pytest.fixture(scope="module")
def arrays() -> dict[str, Any]:
    return _arrays()


def _raw_mb(image_dtype: str) -> float:
    return N * 3 * SIZE * SIZE * np.dtype(image_dtype).itemsize / 1e6


@pytest.mark.parametrize("image_dtype,compression", [("float32", 4), ("float32", 1), ("float32", 0), ("float16", 4)])
def bench_write(benchmark: Any, tmp_path: Path, arrays: dict[str, Any], image_dtype: str, compression: int) -> None:
    path = tmp_path / "s.h5"

    def write() -> None:
        write_shard(path, arrays, _meta(), image_dtype=image_dtype, compression=compression)

    benchmark.pedantic(write, rounds=3, iterations=1, warmup_rounds=1)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["mb_per_s"] = _raw_mb(image_dtype) / mean
    benchmark.extra_info["ratio"] = path.stat().st_size / (_raw_mb(image_dtype) * 1e6)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory, arrays: dict[str, Any]) -> Callable[[str], Path]:
    folder = tmp_path_factory.mktemp("store")
    made: dict[str, Path] = {}

    def get(image_dtype: str) -> Path:
        if image_dtype not in made:
            made[image_dtype] = folder / image_dtype / "be7c4-00000000-00000128.h5"
            made[image_dtype].parent.mkdir()
            write_shard(made[image_dtype], arrays, _meta(), image_dtype=image_dtype)
        return made[image_dtype]

    return get


@pytest.mark.parametrize("image_dtype", ["float32", "float16"])
def bench_read_batches(benchmark: Any, shard: Callable[[str], Path], image_dtype: str) -> None:
    reader = ShardReader(shard(image_dtype), fields=["x_adv", "labels"])

    def read() -> None:
        for _ in reader.iter_batches(BATCH):
            pass

    benchmark.pedantic(read, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = N / benchmark.stats.stats.mean


def bench_read_per_image(benchmark: Any, shard: Callable[[str], Path]) -> None:
    """``reader[i]`` one image at a time, as a DataLoader with workers calls it."""
    reader = ShardReader(shard("float32"), fields=["x_adv", "labels"])

    def read() -> None:
        for i in range(len(reader)):
            reader[i]

    benchmark.pedantic(read, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = N / benchmark.stats.stats.mean


def bench_verify(benchmark: Any, shard: Callable[[str], Path]) -> None:
    path = shard("float32")

    def verify() -> None:
        assert verify_dir(path.parent).ok

    benchmark.pedantic(verify, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["mb_per_s"] = _raw_mb("float32") / benchmark.stats.stats.mean
