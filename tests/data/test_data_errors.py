"""Bad input must fail with a DataError that names the culprit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from medhpc.data import BadImageError, DataError, cache_info, load_manifest, prepare, read_dataset
from medhpc.data.decode import load_image, load_sample
from medhpc.errors import MedhpcError


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_data_errors_are_medhpc_and_value_errors() -> None:
    assert issubclass(BadImageError, DataError)
    assert issubclass(DataError, MedhpcError) and issubclass(DataError, ValueError)


def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "garbage.png"
    path.write_bytes(b"\x89PNG this is not really a png")
    with pytest.raises(BadImageError) as info:
        load_image(path, 16)
    assert info.value.path == path and str(path) in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, format=fmt)
    truncate(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(BadImageError, match="cut"):
        load_image(path, 16)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_mask_of_another_size(tmp_path: Path) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "img.png")
    Image.new("L", (10, 20)).save(tmp_path / "mask.png")
    with pytest.raises(BadImageError, match="mask.png.*10x20.*20x20"):
        load_sample(tmp_path / "img.png", tmp_path / "mask.png", 8)


def test_missing_csv_column(aptos, copy_dataset: Callable[[Path], Path]) -> None:
    root = copy_dataset(aptos.root)
    csv_path = root / "train.csv"
    csv_path.write_text(csv_path.read_text().replace("diagnosis", "level", 1))
    with pytest.raises(DataError) as info:
        read_dataset("aptos", root)
    message = str(info.value)
    assert "'diagnosis'" in message and str(csv_path) in message and "id_code, level" in message


@pytest.mark.parametrize("value", ["7", "x", "", "2.5"])
def test_bad_diagnosis_names_row_and_id(aptos, copy_dataset: Callable[[Path], Path], value: str) -> None:
    root = copy_dataset(aptos.root)
    csv_path = root / "train.csv"
    lines = csv_path.read_text().splitlines()
    image_id = lines[3].split(",")[0]
    lines[3] = f"{image_id},{value}"
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"line 4 \\(id_code '{image_id}'\\): diagnosis '{value}'"):
        read_dataset("aptos", root)


def test_id_without_image(aptos, copy_dataset: Callable[[Path], Path]) -> None:
    root = copy_dataset(aptos.root)
    victim = sorted((root / "train_images").iterdir())[5]
    victim.unlink()
    with pytest.raises(DataError, match=f"no image for id_code '{victim.stem}': expected {victim}"):
        read_dataset("aptos", root)


def test_empty_cxr_class_folder(cxr, copy_dataset: Callable[[Path], Path]) -> None:
    root = copy_dataset(cxr.root)
    folder = root / "chest_xray" / "val" / "NORMAL"
    for p in folder.iterdir():
        p.unlink()
    with pytest.raises(DataError, match=f"class folder has no images: {folder}$"):
        read_dataset("cxr", root)


def test_missing_cxr_split_folder(cxr, copy_dataset: Callable[[Path], Path]) -> None:
    root = copy_dataset(cxr.root)
    folder = root / "chest_xray" / "test" / "PNEUMONIA"
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    with pytest.raises(DataError, match=f"does not exist: {folder}$"):
        read_dataset("cxr", root)


def test_empty_folder_class(tmp_path: Path) -> None:
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "b" / "1.png")
    with pytest.raises(DataError, match=f"class folder has no images: {tmp_path / 'a'}$"):
        read_dataset("folder", tmp_path)


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset kind 'isic'; known kinds: aptos, cxr, folder"):
        read_dataset("isic", tmp_path)


@pytest.mark.parametrize("kind", ["aptos", "cxr", "folder"])
def test_missing_root_is_named(kind: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"does not exist: {missing}$"):
        read_dataset(kind, missing)


def test_bad_fractions_fail_before_any_work(aptos, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="sum to 1"):
        prepare("aptos", aptos.root, tmp_path / "c.h5", fractions=(0.5, 0.2, 0.2), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_skip_bad_reports_every_skipped_image(
    aptos, copy_dataset: Callable[[Path], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_dataset(aptos.root)
    images = sorted((root / "train_images").iterdir())
    images[0].write_bytes(b"garbage")
    truncate(images[1])
    bad = {images[0].stem, images[1].stem}
    out = tmp_path / "c.h5"
    with caplog.at_level(logging.WARNING, logger="medhpc.data"):
        result = prepare("aptos", root, out, size=16, workers=2, skip_bad=True, progress=False)
    assert {s.id for s in result.skipped} == bad
    assert sum(result.counts.values()) == aptos.n - 2
    assert "skipped 2 bad image(s)" in caplog.text
    assert str(images[0]) in caplog.text and str(images[1]) in caplog.text
    info = cache_info(out)
    assert info["n_skipped"] == 2 and {s["id"] for s in info["skipped"]} == bad
    assert all(s["reason"] for s in info["skipped"])
    manifest = load_manifest(result.manifest)
    assert {s.id for s in manifest.skipped} == bad
    assert not bad & {e.id for e in manifest.entries}
