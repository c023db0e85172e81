"""The dataset readers, run on synthetic trees written in the real layouts."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhpc.data import KINDS, DataError, class_names, read_dataset
from medhpc.data.readers import read_aptos, read_cxr, read_folder
from medhpc.data.split import allocate
from medhpc.data.synth import APTOS_POSITIVE_GRADES, cxr_folder_counts


def write_png(path: Path, value: int, size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)


def test_aptos_reads_every_csv_row_with_real_class_balance(aptos) -> None:
    records = read_dataset("aptos", aptos.root)
    with (aptos.root / "train.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r.id for r in records] == [row["id_code"] for row in rows]
    assert [r.grade for r in records] == [int(row["diagnosis"]) for row in rows]
    assert len(records) == aptos.n
    n_pos = round(0.5071 * aptos.n)
    assert sum(r.label for r in records) == n_pos
    assert all(r.label == int(r.grade > 0) for r in records)
    grades = Counter(r.grade for r in records)
    assert [grades[g] for g in (1, 2, 3, 4)] == list(allocate(n_pos, APTOS_POSITIVE_GRADES))
    for rec in records:
        assert rec.path == aptos.root / "train_images" / f"{rec.id}.png"
        assert rec.mask_path == aptos.root / "masks" / "train_images" / f"{rec.id}.png"


def test_aptos_ignores_unlabelled_test_images(aptos) -> None:
    unlabelled = {p.stem for p in (aptos.root / "test_images").glob("*.png")}
    assert unlabelled  # the synthetic archive has some, like the real one
    assert not unlabelled & {r.id for r in read_aptos(aptos.root)}


def test_synthetic_masks_mark_lesions_of_positives_only(aptos, cxr) -> None:
    for ds in (aptos, cxr):
        for rec in read_dataset(ds.kind, ds.root):
            assert rec.mask_path is not None
            mask = np.asarray(Image.open(rec.mask_path))
            assert mask.shape == Image.open(rec.path).size[::-1]
            assert set(np.unique(mask)) <= {0, 255}
            assert mask.any() == bool(rec.label), rec.id


def test_cxr_merges_splits_with_official_proportions(cxr) -> None:
    records = read_cxr(cxr.root)
    assert len(records) == cxr.n
    assert sum(r.label for r in records) == round(0.7297 * cxr.n)
    folders = Counter((r.source_split, r.label) for r in records)
    classes = ["NORMAL", "PNEUMONIA"]
    expected = {(s, classes.index(c)): k for (s, c), k in cxr_folder_counts(cxr.n).items()}
    assert folders == expected
    assert min(folders.values()) >= 1
    assert len({r.id for r in records}) == len(records)
    for rec in records:
        split, cls, stem = rec.id.split("/")
        assert rec.path == cxr.root / "chest_xray" / split / cls / f"{stem}.jpeg"
        assert rec.label == (cls == "PNEUMONIA")
        assert rec.mask_path == cxr.root / "masks" / "chest_xray" / split / cls / f"{stem}.png"


def test_cxr_accepts_the_chest_xray_folder_itself(cxr) -> None:
    assert read_cxr(cxr.root / "chest_xray") == read_cxr(cxr.root)


def test_cxr_ignores_nested_duplicate_and_macosx(cxr, cxr_with_archive_junk: Path) -> None:
    clean = read_cxr(cxr.root)
    junk = read_cxr(cxr_with_archive_junk)
    assert [(r.id, r.label) for r in junk] == [(r.id, r.label) for r in clean]
    assert all("__MACOSX" not in r.path.parts for r in junk)
    assert all(r.path.parts.count("chest_xray") == 1 for r in junk)


def test_readers_are_deterministic(aptos, cxr) -> None:
    assert read_aptos(aptos.root) == read_aptos(aptos.root)
    assert read_cxr(cxr.root) == read_cxr(cxr.root)


def test_folder_reader_sorts_classes_and_skips_non_images(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    write_png(root / "zebra" / "b.png", 10)
    write_png(root / "zebra" / "a.PNG", 20)
    write_png(root / "apple" / "x.bmp", 30)
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "apple" / ".hidden.png").write_bytes(b"junk")
    write_png(root / "masks" / "zebra" / "b.png", 255)  # a mask tree, not a class
    (root / "__MACOSX" / "apple").mkdir(parents=True)
    records = read_folder(root)
    assert class_names("folder", root) == ["apple", "zebra"]
    assert [(r.id, r.label) for r in records] == [("apple/x", 0), ("zebra/a", 1), ("zebra/b", 1)]
    assert records[2].mask_path == root / "masks" / "zebra" / "b.png"
    assert records[0].mask_path is None and records[1].mask_path is None


def test_folder_reader_rejects_ids_that_collide(tmp_path: Path) -> None:
    write_png(tmp_path / "c" / "a.png", 1)
    write_png(tmp_path / "c" / "a.bmp", 1)
    with pytest.raises(DataError, match="duplicate image id 'c/a'"):
        read_folder(tmp_path)


def test_registry_lists_the_three_kinds() -> None:
    assert set(KINDS) == {"aptos", "cxr", "folder"}
