"""Frozen-feature head training against training through the frozen backbone, per head.

The paper grid trains 40 VIB heads on 4 frozen backbones. ``through backbone`` is
``python -m medhpc.train`` with ``feature_cache: false`` (every epoch runs the backbone over
the train and val images); ``cached features`` the default, where the first head on a backbone
computes its pooled features once (``first head``, the cost included) and every later head
reuses them (``later head``). Each benchmark is one whole training run: ``EPOCHS`` epochs of a
VIB head (latent 256, the paper's) on a frozen ResNet50 at ``SIZE`` px over ``N_IMAGES``
synthetic fundus images, then the kept model's evaluation on val and test (the same in all
three: it runs the full model once).

Run::

    .venv/bin/python -m pytest benchmarks/bench_features.py --benchmark-only -p no:cacheprovider

Environment: ``MEDHPC_BENCH_THREADS`` (default 2), ``MEDHPC_BENCH_IMAGES`` (default 160),
``MEDHPC_BENCH_SIZE`` (default 64), ``MEDHPC_BENCH_EPOCHS`` (default 5; the paper's VIB recipe
runs 20), ``MEDHPC_BENCH_DEVICE`` (default cpu).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from medhpc.data import make_synthetic, prepare
from medhpc.train import from_mapping, train

THREADS = int(os.environ.get("MEDHPC_BENCH_THREADS", "2"))
N_IMAGES = int(os.environ.get("MEDHPC_BENCH_IMAGES", "160"))
SIZE = int(os.environ.get("MEDHPC_BENCH_SIZE", "64"))
EPOCHS = int(os.environ.get("MEDHPC_BENCH_EPOCHS", "5"))
DEVICE = os.environ.get("MEDHPC_BENCH_DEVICE", "cpu")

torch.set_num_threads(THREADS)

pytestmark = (
    [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="MEDHPC_BENCH_DEVICE=cuda but no GPU")]
    if DEVICE == "cuda"
    else []
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench-features")
    make_synthetic("aptos", tmp / "aptos", n=N_IMAGES, size=SIZE, seed=0, workers=2)
    prepare("aptos", tmp / "aptos", tmp / "aptos.h5", size=SIZE, workers=2, progress=False)
    return tmp / "aptos.h5"


def _config(cache: Path, out: Path, cached: bool, beta: float) -> Any:
    return from_mapping({
        "preset": "vib", "model": {"arch": "resnet50", "vib": {"beta": beta}}, "data": {"cache": str(cache)},
        "epochs": EPOCHS, "device": DEVICE, "out": str(out), "feature_cache": cached,
    })  # fmt: skip


@pytest.mark.parametrize("way", ["through backbone", "cached features, first head", "cached features, later head"])
def bench_head_training(benchmark: Any, cache: Path, tmp_path: Path, way: str) -> None:
    out = tmp_path / "runs"
    cached = way != "through backbone"
    counter = iter(range(10**6))

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        i = next(counter)
        shutil.rmtree(out / "vib", ignore_errors=True)
        for run in out.glob("*"):
            if run.name != "features":
                shutil.rmtree(run, ignore_errors=True)
        if way == "cached features, first head":
            shutil.rmtree(out / "features", ignore_errors=True)
        elif way == "cached features, later head" and not (out / "features").exists():
            train(_config(cache, out, True, 1.0), progress=False)  # the first head writes the features
            for run in out.glob("*"):
                if run.name != "features":
                    shutil.rmtree(run, ignore_errors=True)
        return (_config(cache, out, cached, 1e-3 * (i + 1)),), {}

    benchmark.pedantic(lambda cfg: train(cfg, progress=False), setup=setup, rounds=2, iterations=1)
    benchmark.extra_info.update(images=N_IMAGES, size=SIZE, epochs=EPOCHS, device=DEVICE)
