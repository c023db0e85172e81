"""Training images/s from the HDF5 cache, and whether the loader or the model is the bottleneck.

Run with::

    .venv/bin/python -m pytest benchmarks/bench_train.py --benchmark-only

For ResNet50 at 224 px and InceptionV3 at 299 px, in fp32 and bf16 (autocast; channels_last
on CUDA), each benchmark measures, on the same cache and device:

- ``end_to_end``: the training step fed by :class:`~medhpc.data.cache.CacheLoader`
  (uint8 batches, converted on the device), what ``python -m medhpc.train`` does;
- ``loader``: the loader alone, batches converted on the device, no model;
- ``model``: the training step alone on one resident batch.

``bottleneck`` is whichever of loader and model is slower. The goal on an H100 is
>= 2500 img/s end to end for ResNet50 in bf16, GPU-bound. On the CPU the sizes are cut down
(fewer images, smaller batches) so the run takes minutes; compare ratios there, not times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medhpc.data import CacheLoader, make_synthetic, prepare
from medhpc.data.cache import prepare_batch
from medhpc.models import ModelConfig, build_model

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
BATCH = int(os.environ.get("MEDHPC_BENCH_BATCH", 128 if CUDA else 8))
N_IMAGES = int(os.environ.get("MEDHPC_BENCH_IMAGES", 2048 if CUDA else 32))
WORKERS = int(os.environ.get("MEDHPC_BENCH_WORKERS", min(8, os.cpu_count() or 1) if CUDA else 0))
SIZES = {"resnet50": 224, "inception_v3": 299}


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    tmp = tmp_path_factory.mktemp("bench-train")
    out = {}
    for size in sorted(set(SIZES.values())):
        # Few distinct images painted, repeated by the loader's epochs: painting is not measured.
        make_synthetic("aptos", tmp / f"aptos{size}", n=min(N_IMAGES, 256), size=size, seed=0, workers=2)
        out[size] = tmp / f"aptos{size}.h5"
        prepare("aptos", tmp / f"aptos{size}", out[size], size=size, fractions=(1.0, 0.0, 0.0),
                workers=2, compression="none", progress=False)  # fmt: skip
    return out


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _rate(fn: Callable[[], int], repeats: int = 1) -> float:
    fn()  # warm-up (cudnn autotuning, worker start)
    _sync()
    start = time.perf_counter()
    n = sum(fn() for _ in range(repeats))
    _sync()
    return n / (time.perf_counter() - start)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["resnet50", "inception_v3"])
def test_training_throughput(benchmark, caches: dict[int, Path], arch: str, precision: str) -> None:  # type: ignore[no-untyped-def]
    size = SIZES[arch]
    torch.manual_seed(0)
    channels_last = CUDA
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(ModelConfig(arch=arch)).to(DEVICE, memory_format=fmt).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    amp = torch.bfloat16 if precision == "bf16" else None
    if CUDA:
        torch.backends.cudnn.benchmark = True

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(DEVICE.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model.forward_train(x)
            loss = F.cross_entropy(out.logits.float(), y)
            if out.aux_logits is not None:
                loss = loss + 0.4 * F.cross_entropy(out.aux_logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    loader = CacheLoader(caches[size], "train", batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                         drop_last=True, pin_memory=CUDA, persistent_workers=WORKERS > 0)  # fmt: skip
    with loader:
        n_loader = len(loader.dataset)
        epochs = max(1, N_IMAGES // n_loader)

        def end_to_end() -> int:
            n = 0
            for _ in range(epochs):
                for images, labels in loader:
                    step(prepare_batch(images, DEVICE, None, channels_last), labels.to(DEVICE, non_blocking=True))
                    n += labels.shape[0]
            _sync()
            return n

        def loader_only() -> int:
            n = 0
            for _ in range(epochs):
                for images, labels in loader:
                    prepare_batch(images, DEVICE, None, channels_last)
                    n += labels.shape[0]
            _sync()
            return n

        x = torch.rand(BATCH, 3, size, size, device=DEVICE).contiguous(memory_format=fmt)
        y = torch.randint(0, 2, (BATCH,), device=DEVICE)
        steps = max(1, (epochs * n_loader) // BATCH)

        def model_only() -> int:
            for _ in range(steps):
                step(x, y)
            _sync()
            return steps * BATCH

        loader_rate = _rate(loader_only)
        model_rate = _rate(model_only)
        n = benchmark.pedantic(end_to_end, rounds=2 if CUDA else 1, iterations=1, warmup_rounds=1)
    rate = n / benchmark.stats.stats.mean
    benchmark.extra_info.update(
        {
            "device": torch.cuda.get_device_name() if CUDA else f"cpu ({torch.get_num_threads()} threads)",
            "arch": arch, "size": size, "precision": precision, "batch": BATCH, "num_workers": WORKERS,
            "images_per_epoch_round": n,
            "end_to_end_images_per_s": round(rate, 1),
            "loader_images_per_s": round(loader_rate, 1),
            "model_images_per_s": round(model_rate, 1),
            "bottleneck": "loader" if loader_rate < model_rate else "model",
        }
    )  # fmt: skip
