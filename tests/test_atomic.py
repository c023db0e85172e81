"""Atomic writes: a failure leaves the old file untouched and no partial one; normal modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medhpc import atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic.write_json({"a": 1}, target)
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_files_get_the_umask_mode_not_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic.write_text("x", tmp_path / "f.txt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
