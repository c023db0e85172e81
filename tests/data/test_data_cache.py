"""prepare -> HDF5 cache -> CacheDataset / CacheLoader round trip."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import medhpc
from medhpc.data import (
    CacheDataset,
    CacheLoader,
    DataError,
    cache_info,
    load_manifest,
    prepare,
    read_dataset,
    to_float,
)
from medhpc.data.decode import load_image, load_mask

SIZE = 24  # smaller than the 32 px sources, so resizing is exercised


@pytest.fixture(scope="module")
def aptos_cache(aptos, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "aptos.h5"
    prepare("aptos", aptos.root, out, size=SIZE, seed=1, workers=2, progress=False)
    return out


def test_prepare_is_the_function_not_the_module() -> None:
    assert callable(prepare)


def test_cache_holds_direct_decodes_of_every_split(aptos, aptos_cache: Path) -> None:
    manifest = load_manifest(aptos_cache.with_name("aptos.manifest.json"))
    records = {r.id: r for r in read_dataset("aptos", aptos.root)}
    seen: list[str] = []
    with h5py.File(aptos_cache, "r") as h5:
        for split in ("train", "val", "test"):
            group = h5[split]
            ids = list(group["ids"].asstr()[()])
            assert ids == manifest.ids(split)
            assert group["images"].dtype == np.uint8 and group["images"].shape == (len(ids), SIZE, SIZE, 3)
            assert group["images"].chunks == (1, SIZE, SIZE, 3)
            assert group["masks"].shape == (len(ids), SIZE, SIZE)
            for i, image_id in enumerate(ids):
                rec = records[image_id]
                np.testing.assert_array_equal(group["images"][i], load_image(rec.path, SIZE))
                np.testing.assert_array_equal(group["masks"][i], load_mask(rec.mask_path, SIZE))
                assert group["labels"][i] == rec.label
            seen += ids
        assert sorted(seen) == sorted(records)
        attrs = dict(h5.attrs)
    assert attrs["kind"] == "aptos" and attrs["size"] == SIZE and attrs["seed"] == 1
    assert list(attrs["fractions"]) == [0.8, 0.05, 0.15]
    assert attrs["root"] == str(aptos.root.resolve())
    assert attrs["medhpc_version"] == medhpc.__version__
    manifest_file = aptos_cache.with_name("aptos.manifest.json")
    assert attrs["manifest_sha256"] == hashlib.sha256(manifest_file.read_bytes()).hexdigest()
    assert [e.path for e in manifest.entries if e.id == seen[0]] == [f"train_images/{seen[0]}.png"]


def test_grayscale_cxr_is_replicated_to_three_channels(cxr, tmp_path: Path) -> None:
    out = tmp_path / "cxr.h5"
    result = prepare("cxr", cxr.root, out, size=SIZE, workers=0, compression="gzip", progress=False)
    assert sum(result.counts.values()) == cxr.n
    with h5py.File(out, "r") as h5:
        images = np.concatenate([h5[s]["images"][()] for s in ("train", "val", "test")])
    assert images.std() > 10
    np.testing.assert_array_equal(images[..., 0], images[..., 1])
    np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_worker_count_and_compression_do_not_change_pixels(aptos, aptos_cache: Path, tmp_path: Path) -> None:
    other = tmp_path / "serial.h5"
    prepare("aptos", aptos.root, other, size=SIZE, seed=1, workers=0, compression="none", progress=False)
    with h5py.File(aptos_cache, "r") as a, h5py.File(other, "r") as b:
        assert b["train"]["images"].compression is None and a["train"]["images"].compression == "lzf"
        for split in ("train", "val", "test"):
            for name in ("images", "labels", "masks"):
                np.testing.assert_array_equal(a[split][name][()], b[split][name][()])


def test_dataset_items_and_batches(aptos_cache: Path) -> None:
    ds = CacheDataset(aptos_cache, "train", with_mask=True)
    image, label, mask = ds[3]
    assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
    assert label.dtype == torch.int64 and mask.shape == (SIZE, SIZE)
    with h5py.File(aptos_cache, "r") as h5:
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), h5["train"]["images"][3])
        assert int(label) == h5["train"]["labels"][3]
    order = [7, 2, 7, 0, -1]  # unsorted, repeated, negative
    images, labels, masks = ds[order]
    for k, i in enumerate(order):
        one = ds[i]
        assert torch.equal(images[k], one[0]) and labels[k] == one[1] and torch.equal(masks[k], one[2])
    assert ds.ids[:2] == list(h5py.File(aptos_cache, "r")["train"]["ids"].asstr()[:2])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_loader_covers_each_image_once_in_a_seeded_order(aptos_cache: Path) -> None:
    loader = CacheLoader(aptos_cache, "train", batch_size=8, shuffle=True, seed=3)
    ds = loader.dataset
    epoch0 = [b[1] for b in loader]
    epoch1 = list(loader)
    assert len(epoch0) == len(loader) == -(-len(ds) // 8)
    order0 = np.concatenate(loader.batch_indices(epoch=0))
    order1 = np.concatenate(loader.batch_indices(epoch=1))
    assert sorted(order0) == list(range(len(ds)))
    assert not np.array_equal(order0, order1)  # reshuffled each epoch
    np.testing.assert_array_equal(torch.cat(epoch0).numpy(), ds.labels[order0])
    first = epoch1[0]
    assert torch.equal(first[0], ds[order1[:8]][0])
    again = CacheLoader(aptos_cache, "train", batch_size=8, shuffle=True, seed=3)
    assert [torch.equal(a[1], b) for a, b in zip(again, epoch0, strict=True)] == [True] * len(epoch0)
    dropped = CacheLoader(aptos_cache, "train", batch_size=8, drop_last=True)
    assert all(len(b[1]) == 8 for b in dropped) and len(dropped) == len(ds) // 8


@pytest.mark.parametrize("persistent", [False, True])
def test_loader_with_two_workers_yields_the_same_batches(aptos_cache: Path, persistent: bool) -> None:
    serial = CacheLoader(aptos_cache, "train", batch_size=5, shuffle=True, seed=1, with_mask=True)
    parallel = CacheLoader(aptos_cache, "train", batch_size=5, shuffle=True, seed=1, with_mask=True,
                           num_workers=2, persistent_workers=persistent)
    serial.dataset[0]  # an open handle in the parent must not break forked workers
    parallel.dataset[0]
    with parallel:
        for _ in range(2):  # the second epoch has a new order (and reuses persistent workers)
            a, b = list(serial), list(parallel)
            assert len(a) == len(b) == len(serial)
            for x, y in zip(a, b, strict=True):
                assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
    assert parallel._loader is None or not persistent


def test_pin_memory_pins_every_batch_without_workers(aptos_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pin_memory=True`` with ``num_workers=0`` (the training default) used to be ignored:
    host-to-device copies then could not overlap compute. No GPU here: pinning is recorded."""
    pinned: list[torch.Tensor] = []

    def pin(self: torch.Tensor, *args: object) -> torch.Tensor:
        pinned.append(self.clone())  # stands for the page-locked copy
        return pinned[-1]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    batches = list(CacheLoader(aptos_cache, "val", batch_size=4, with_mask=True, pin_memory=True))
    yielded = [t for batch in batches for t in batch]  # images, labels, masks of every batch
    assert batches and len(yielded) == len(pinned) == 3 * len(batches)
    assert all(t is p for t, p in zip(yielded, pinned, strict=True))
    pinned.clear()
    list(CacheLoader(aptos_cache, "val", batch_size=4, pin_memory=False))
    assert pinned == []


@pytest.mark.gpu
@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_pinned_on_a_cuda_machine(aptos_cache: Path, workers: int) -> None:
    with CacheLoader(aptos_cache, "train", batch_size=4, num_workers=workers, pin_memory=True) as loader:
        assert all(t.is_pinned() for batch in loader for t in batch)


def test_to_float_scales_to_unit_range() -> None:
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    y = to_float(x, device="cpu")
    assert y.dtype == torch.float32
    assert torch.allclose(y, torch.tensor([[0.0, 0.2, 1.0]]))


def test_cache_info_reports_counts(aptos, aptos_cache: Path) -> None:
    info = cache_info(aptos_cache)
    assert sum(info["counts"].values()) == aptos.n
    assert info["skipped"] == [] and info["n_skipped"] == 0
    assert info["classes"] == ["no_dr", "dr"]


def test_dataset_errors_name_the_problem(aptos_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no split 'dev'"):
        CacheDataset(aptos_cache, "dev")
    with pytest.raises(DataError, match="does not exist"):
        CacheDataset(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="junk.h5"):
        CacheDataset(tmp_path / "junk.h5")


def test_failed_prepare_leaves_existing_cache_untouched(
    aptos, copy_dataset: Callable[[Path], Path], tmp_path: Path
) -> None:
    root = copy_dataset(aptos.root)
    out = tmp_path / "out" / "cache.h5"
    prepare("aptos", root, out, size=16, workers=0, progress=False)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert set(before) == {"cache.h5", "cache.manifest.json"}
    victim = sorted((root / "train_images").iterdir())[-1]
    victim.write_bytes(b"garbage")
    for workers in (0, 2):
        with pytest.raises(DataError, match=victim.name):
            prepare("aptos", root, out, size=16, workers=workers, progress=False)
        assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before


def test_interrupted_prepare_removes_its_temporary_files(
    aptos, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The package exports the function ``prepare``, which hides the module of
    # the same name from attribute access.
    prep = importlib.import_module("medhpc.data.prepare")

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "save_manifest", boom)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("aptos", aptos.root, tmp_path / "c.h5", size=16, workers=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_folder_dataset_with_some_masks_and_empty_splits(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "folder"
    for cls, value in (("benign", 40), ("malignant", 200)):
        for i in range(4):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.new("L", (30, 20), value + i).save(root / cls / f"{i}.png")
    (root / "masks" / "malignant").mkdir(parents=True)
    Image.new("L", (30, 20), 255).save(root / "masks" / "malignant" / "0.png")
    out = tmp_path / "f.h5"
    result = prepare("folder", root, out, size=8, fractions=(1.0, 0.0, 0.0), workers=0, progress=False)
    assert result.counts == {"train": 8, "val": 0, "test": 0}
    assert cache_info(out)["classes"] == ["benign", "malignant"]
    with h5py.File(out, "r") as h5:
        ids = list(h5["train"]["ids"].asstr()[()])
        has_mask = dict(zip(ids, h5["train"]["has_mask"][()], strict=True))
        masks = dict(zip(ids, h5["train"]["masks"][()], strict=True))
        assert h5["val"]["images"].shape == (0, 8, 8, 3)
    assert [i for i, m in has_mask.items() if m] == ["malignant/0"]
    assert (masks["malignant/0"] == 255).all() and not masks["benign/0"].any()
    assert len(CacheDataset(out, "test")) == 0
    assert list(CacheLoader(out, "test")) == []
