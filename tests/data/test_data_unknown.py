"""Folders and files a reader does not know are errors naming them, or (``ignore_unknown``)
left out and logged with their count: never left out silently."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhpc.data import DataError, prepare, read_dataset
from medhpc.data.cli import main


def write_image(path: Path, suffix: str = ".jpeg") -> Path:
    path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(path)
    return path


def ids(records: list) -> list[str]:
    return [r.id for r in records]


def test_cxr_unknown_class_folder_is_named(cxr, copy_dataset: Callable[[Path], Path]) -> None:
    root = copy_dataset(cxr.root)
    covid = root / "chest_xray" / "train" / "COVID"
    write_image(covid / "covid1")
    with pytest.raises(DataError, match=r"1 unknown path\(s\) in .*chest_xray") as info:
        read_dataset("cxr", root)
    assert f"  {covid}/\n" in str(info.value)  # the folder, not each image in it
    assert "--ignore-unknown" in str(info.value)


def test_cxr_unknown_files_in_a_class_folder_are_named(cxr, copy_dataset: Callable[[Path], Path]) -> None:
    root = copy_dataset(cxr.root)
    normal = root / "chest_xray" / "test" / "NORMAL"
    readme = normal / "README.txt"
    readme.write_text("where these came from")
    bmp = write_image(normal / "odd", ".bmp")  # an image, but not of a format Kermany ships
    sub = normal / "more"
    write_image(sub / "x")
    stray = root / "chest_xray" / "val" / "labels.csv"  # a file beside the class folders
    stray.write_text("id,label\n")
    with pytest.raises(DataError, match=r"4 unknown path\(s\)") as info:
        read_dataset("cxr", root)
    listed = [line.strip() for line in str(info.value).splitlines() if line.startswith("  ")]
    assert listed == [str(readme), f"{sub}/", str(bmp), str(stray)]


def test_cxr_known_junk_is_skipped_without_a_word(
    cxr, copy_dataset: Callable[[Path], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_dataset(cxr.root)
    for folder in (root / "chest_xray" / "train", root / "chest_xray" / "train" / "PNEUMONIA"):
        (folder / ".DS_Store").write_bytes(b"junk")
        (folder / "Thumbs.db").write_bytes(b"junk")
        (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
    with caplog.at_level(logging.WARNING, logger="medhpc.data"):
        assert ids(read_dataset("cxr", root)) == ids(read_dataset("cxr", cxr.root))
    assert not caplog.records


def test_cxr_ignore_unknown_leaves_them_out_and_logs_them(
    cxr, copy_dataset: Callable[[Path], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_dataset(cxr.root)
    covid = root / "chest_xray" / "train" / "COVID"
    write_image(covid / "covid1")
    readme = root / "chest_xray" / "val" / "PNEUMONIA" / "README.txt"
    readme.write_text("notes")
    with caplog.at_level(logging.WARNING, logger="medhpc.data"):
        records = read_dataset("cxr", root, ignore_unknown=True)
    assert ids(records) == ids(read_dataset("cxr", cxr.root))
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert message.startswith("ignored 2 unknown path(s) in ") and f"{covid}/" in message and str(readme) in message


def test_aptos_unlisted_images_and_stray_files_are_named(
    aptos, copy_dataset: Callable[[Path], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_dataset(aptos.root)
    images = root / "train_images"
    unlisted = write_image(images / "not_in_csv", ".png")
    notes = images / "README.txt"
    notes.write_text("notes")
    (images / ".DS_Store").write_bytes(b"junk")  # known junk: not reported
    expected = f"2 unknown path(s) in {images} (expected only the train.csv"
    with pytest.raises(DataError, match=re.escape(expected)) as info:
        read_dataset("aptos", root)
    assert f"  {unlisted}\n" in str(info.value) and f"  {notes}\n" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="medhpc.data"):
        assert ids(read_dataset("aptos", root, ignore_unknown=True)) == ids(read_dataset("aptos", aptos.root))
    assert "ignored 2 unknown path(s)" in caplog.text and str(unlisted) in caplog.text


def test_many_unknown_paths_are_counted_and_the_first_listed(cxr, copy_dataset: Callable[[Path], Path]) -> None:
    root = copy_dataset(cxr.root)
    for i in range(25):
        (root / "chest_xray" / "train" / "NORMAL" / f"note{i:02d}.txt").write_text("x")
    with pytest.raises(DataError, match=r"25 unknown path\(s\)") as info:
        read_dataset("cxr", root)
    assert str(info.value).count(".txt") == 20 and "... and 5 more" in str(info.value)


def test_prepare_stops_before_writing_and_ignore_unknown_prepares(
    cxr, copy_dataset: Callable[[Path], Path], tmp_path: Path
) -> None:
    root = copy_dataset(cxr.root)
    covid = root / "chest_xray" / "train" / "COVID"
    write_image(covid / "covid1")
    out = tmp_path / "cache" / "c.h5"
    with pytest.raises(DataError, match=re.escape(f"{covid}/")):
        prepare("cxr", root, out, size=16, workers=0, progress=False)
    assert not out.parent.exists()  # refused before anything is written
    result = prepare("cxr", root, out, size=16, workers=0, progress=False, ignore_unknown=True)
    assert sum(result.counts.values()) == cxr.n


def test_ignore_unknown_from_the_command_line(
    cxr, copy_dataset: Callable[[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = copy_dataset(cxr.root)
    covid = root / "chest_xray" / "train" / "COVID"
    write_image(covid / "covid1")
    out = tmp_path / "c.h5"
    argv = ["prepare", "--kind", "cxr", "--root", str(root), "--size", "16", "--out", str(out), "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 unknown path(s)") and f"{covid}/" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*argv, "--ignore-unknown"]) == 0
    assert "skipped=0" in capsys.readouterr().out and out.is_file()
    assert "ignored 1 unknown path(s)" in caplog.text and f"{covid}/" in caplog.text
