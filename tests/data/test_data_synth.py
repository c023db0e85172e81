"""Synthetic stand-ins: layouts, balance, determinism, image format."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhpc.data import DataError, make_synthetic, read_dataset
from medhpc.data.split import allocate
from medhpc.data.synth import CXR_SPLIT_SIZES, cxr_folder_counts


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("kind", ["aptos", "cxr"])
def test_same_seed_gives_byte_identical_files(kind: str, tmp_path: Path) -> None:
    make_synthetic(kind, tmp_path / "a", n=24, size=24, seed=5)
    make_synthetic(kind, tmp_path / "b", n=24, size=24, seed=5, workers=2)
    make_synthetic(kind, tmp_path / "c", n=24, size=24, seed=6)
    a, b, c = (tree_digest(tmp_path / x) for x in "abc")
    assert a == b  # also independent of the number of worker processes
    assert len(a) >= 2 * 24
    changed = [k for k in a if k in c and a[k] != c[k]]
    assert a.keys() != c.keys() or changed


def test_aptos_balance_at_scale(tmp_path: Path) -> None:
    summary = make_synthetic("aptos", tmp_path / "a", n=300, size=16, seed=1, workers=2)
    records = read_dataset("aptos", summary.root)
    n_pos = sum(r.label for r in records)
    assert n_pos == summary.n_positive == round(0.5071 * 300)
    grades = Counter(r.grade for r in records)
    real = (370, 999, 193, 295)
    for g, count in zip((1, 2, 3, 4), real, strict=True):
        assert abs(grades[g] - n_pos * count / sum(real)) < 1
    with (summary.root / "train.csv").open() as fh:
        assert next(csv.reader(fh)) == ["id_code", "diagnosis"]
    assert all(len(r.id) == 12 and int(r.id, 16) >= 0 for r in records)


def test_cxr_spreads_classes_over_official_split_folders(tmp_path: Path) -> None:
    n = 400
    counts = cxr_folder_counts(n)
    n_pos = round(0.7297 * n)
    assert sum(counts.values()) == n
    assert sum(v for (_, c), v in counts.items() if c == "PNEUMONIA") == n_pos
    for cls, sizes in CXR_SPLIT_SIZES.items():
        total = sum(v for (_, c), v in counts.items() if c == cls)
        official = dict(zip(("train", "test", "val"), allocate(total, sizes), strict=True))
        for split in ("train", "test", "val"):
            # Official proportions, except that val gets at least one image.
            assert abs(counts[(split, cls)] - official[split]) <= 1
            assert counts[(split, cls)] >= 1


def test_cxr_smallest_readable_dataset(tmp_path: Path) -> None:
    make_synthetic("cxr", tmp_path / "ok", n=11, size=16)
    records = read_dataset("cxr", tmp_path / "ok")
    assert len({(r.source_split, r.label) for r in records}) == 6
    with pytest.raises(DataError, match="n >= 11"):
        make_synthetic("cxr", tmp_path / "small", n=10, size=16)


def test_image_formats_match_the_real_archives(aptos, cxr) -> None:
    for path in (aptos.root / "train_images").iterdir():
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (aptos.size, aptos.size))
    modes = Counter()
    for rec in read_dataset("cxr", cxr.root):
        with Image.open(rec.path) as im:
            assert im.format == "JPEG" and im.size == (cxr.size, cxr.size)
            modes[im.mode] += 1
    assert modes["L"] >= 0.9 * cxr.n  # mostly 8-bit grayscale, like Kermany


def test_fundus_is_red_on_black_and_cxr_has_dark_lungs(aptos, cxr) -> None:
    img = np.asarray(Image.open(next((aptos.root / "train_images").iterdir())), dtype=float)
    s = aptos.size
    centre, corner = img[s // 4 : 3 * s // 4, s // 4 : 3 * s // 4], img[:3, :3]
    assert corner.mean() < 20
    assert centre[..., 0].mean() > centre[..., 1].mean() > centre[..., 2].mean()
    xray = np.asarray(Image.open(read_dataset("cxr", cxr.root)[0].path).convert("L"), dtype=float)
    s = cxr.size
    lung = xray[int(0.4 * s) : int(0.55 * s), int(0.25 * s) : int(0.35 * s)]
    spine = xray[int(0.4 * s) : int(0.55 * s), int(0.48 * s) : int(0.52 * s)]
    assert lung.mean() < spine.mean() - 20


def test_lesion_options_change_positives_only(tmp_path: Path) -> None:
    make_synthetic("aptos", tmp_path / "a", n=12, size=24, seed=2)
    make_synthetic("aptos", tmp_path / "b", n=12, size=24, seed=2, lesion_contrast=1.5, lesions=12)
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    for rec in read_dataset("aptos", tmp_path / "a"):
        key = f"train_images/{rec.id}.png"
        assert (a[key] == b[key]) == (rec.label == 0), rec.id


def test_refuses_a_non_empty_output_folder(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        make_synthetic("aptos", tmp_path, n=3, size=16)


def test_rerun_with_same_parameters_keeps_the_finished_dataset(tmp_path: Path) -> None:
    out = tmp_path / "aptos"
    first = make_synthetic("aptos", out, n=6, size=16, seed=3)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = make_synthetic("aptos", out, n=6, size=16, seed=3)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_rerun_with_other_parameters_names_them(tmp_path: Path) -> None:
    out = tmp_path / "aptos"
    make_synthetic("aptos", out, n=6, size=16, seed=3)
    with pytest.raises(DataError, match=r"other parameters \(seed: 3 there, 4 asked\)"):
        make_synthetic("aptos", out, n=6, size=16, seed=4)


def test_an_unfinished_generation_is_not_taken_for_a_finished_one(tmp_path: Path) -> None:
    out = tmp_path / "aptos"
    make_synthetic("aptos", out, n=6, size=16, seed=3)
    (out / "synth.json").unlink()  # as if killed before the record was written
    with pytest.raises(DataError, match="holds no finished synthetic dataset"):
        make_synthetic("aptos", out, n=6, size=16, seed=3)


def test_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="aptos, cxr"):
        make_synthetic("mri", tmp_path / "x", n=3)
