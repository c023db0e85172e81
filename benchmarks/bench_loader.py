"""Images/s of the HDF5 cache loader vs decoding PNGs with PIL, at 224 px.

Run with::

    .venv/bin/python -m pytest benchmarks/bench_loader.py --benchmark-only

Each benchmark round is one epoch over the same synthetic APTOS images in
batches of 32; ``extra_info["images_per_s"]`` is images / mean epoch time.
Both pipelines keep their worker processes across epochs (persistent
workers), so worker start-up is paid in the warm-up round only. The PIL
baseline decodes PNGs that are already 224 px, its best case: real APTOS
photographs are ~2-3 megapixels (the ``512`` variant shows the cost of a
resize on top).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from medhpc.data import CacheLoader, make_synthetic, prepare
from medhpc.data.decode import load_image

N_IMAGES = 256
SIZE = 224
BATCH = 32


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():  # type: ignore[no-untyped-def]
    # Both pipelines only copy bytes in torch; with 2 OpenMP threads on a busy
    # 2-core machine a torch.stack of one batch took 200 ms instead of 2 ms,
    # which would measure the scheduler, not the loaders.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    make_synthetic("aptos", tmp / "aptos224", n=N_IMAGES, size=SIZE, seed=0, workers=2)
    make_synthetic("aptos", tmp / "aptos512", n=N_IMAGES // 4, size=512, seed=0, workers=2)
    cache = tmp / "aptos224.h5"
    prepare("aptos", tmp / "aptos224", cache, size=SIZE, fractions=(1.0, 0.0, 0.0), workers=2, progress=False)
    return {"cache": cache, "png224": tmp / "aptos224", "png512": tmp / "aptos512"}


class _PngDataset(Dataset[tuple[torch.Tensor, int]]):
    """The naive pipeline: decode (and resize) each PNG when it is asked for."""

    def __init__(self, root: Path) -> None:
        self.paths = sorted((root / "train_images").glob("*.png"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(load_image(self.paths[i], SIZE).transpose(2, 0, 1).copy()), 0


def _run(benchmark, epoch, workers: int, source: str) -> None:  # type: ignore[no-untyped-def]
    n = benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=1)
    rate = n / benchmark.stats.stats.mean
    benchmark.extra_info.update(
        {"images_per_s": round(rate, 1), "images": n, "size": SIZE, "batch": BATCH,
         "num_workers": workers, "source": source}
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_cache_loader(benchmark, data: dict[str, Path], workers: int) -> None:  # type: ignore[no-untyped-def]
    with CacheLoader(data["cache"], "train", batch_size=BATCH, shuffle=True, num_workers=workers,
                     persistent_workers=True) as loader:

        def epoch() -> int:
            return sum(len(labels) for _, labels in loader)

        _run(benchmark, epoch, workers, "hdf5 cache (lzf)" + (", persistent workers" if workers else ""))


@pytest.mark.parametrize("source_px", [224, 512])
@pytest.mark.parametrize("workers", [0, 2])
def test_pil_decode(  # type: ignore[no-untyped-def]
    benchmark, data: dict[str, Path], workers: int, source_px: int
) -> None:
    loader = DataLoader(_PngDataset(data[f"png{source_px}"]), batch_size=BATCH, shuffle=True,
                        num_workers=workers, persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(0))

    def epoch() -> int:
        return sum(len(labels) for _, labels in loader)

    _run(benchmark, epoch, workers, f"PIL decode of {source_px} px PNGs" + (" + resize" if source_px != SIZE else ""))


def test_cache_batches_equal_pil_decodes(data: dict[str, Path]) -> None:
    """The two pipelines being compared deliver the same pixels."""
    loader = CacheLoader(data["cache"], "train", batch_size=4)
    images, _ = next(iter(loader))
    paths = [data["png224"] / "train_images" / f"{i}.png" for i in loader.dataset.ids[:4]]
    direct = np.stack([load_image(p, SIZE).transpose(2, 0, 1) for p in paths])
    np.testing.assert_array_equal(images.numpy(), direct)
