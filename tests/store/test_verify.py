"""``verify`` finds every truncated, altered, missing or unverified shard and every leftover
temporary, one line each, and exits non-zero; a clean set passes with exit code 0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from medhpc.__main__ import main
from medhpc.store import ShardMeta, verify_dir, verify_shard, write_shard

REPO = Path(__file__).resolve().parents[2]


def _kinds(folder: Path) -> list[tuple[str, str]]:
    return [(p.kind, p.path.name) for p in verify_dir(folder).problems]


def test_a_clean_set_verifies(shard_set: Any) -> None:
    report = verify_dir(shard_set.folder)
    assert report.ok and report.problems == []
    assert (report.shards, report.verified, report.sets) == (4, 4, {"5e7": 4})
    assert report.lines() == [f"OK {shard_set.folder}: 4 shard(s) in 1 set(s), 4 verified"]


def test_truncated_shard(shard_set: Any) -> None:
    path = shard_set.paths[1]
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    problems = verify_dir(shard_set.folder).problems
    assert [(p.kind, p.path) for p in problems] == [("truncated", path)]
    assert "truncated" in problems[0].message


def test_shard_cut_by_a_few_bytes_is_truncated(shard_set: Any) -> None:
    path = shard_set.paths[3]
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 10)
    assert _kinds(shard_set.folder) == [("truncated", path.name)]


def _flip_byte_in_chunk(path: Path, dataset: str) -> None:
    with h5py.File(path, "r") as f:
        chunk = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(chunk.byte_offset + chunk.size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x40]))


def test_flipped_byte_in_a_data_chunk_is_altered(shard_set: Any) -> None:
    path = shard_set.paths[2]
    _flip_byte_in_chunk(path, "x_adv")
    problems = verify_dir(shard_set.folder).problems
    assert {p.kind for p in problems} == {"altered"} and {p.path for p in problems} == {path}
    text = "\n".join(p.message for p in problems)
    assert "dataset 'x_adv': 1 of 1 chunk(s) fails its fletcher32 checksum" in text
    assert "SHA-256 mismatch" in text
    # The whole-file digest alone also catches it.
    assert [p.kind for p in verify_dir(shard_set.folder, read_data=False).problems] == ["altered"]


def test_changed_attribute_is_altered(shard_set: Any) -> None:
    with h5py.File(shard_set.paths[0], "r+") as f:
        f.attrs["seed"] = 8
    assert _kinds(shard_set.folder) == [("altered", shard_set.paths[0].name)]


def test_deleted_shard_in_the_middle_is_a_gap(shard_set: Any) -> None:
    shard_set.paths[1].unlink()
    shard_set.paths[1].with_name(shard_set.paths[1].name + ".sha256").unlink()
    problems = verify_dir(shard_set.folder).problems
    assert len(problems) == 1 and problems[0].kind == "missing"
    assert problems[0].message == (
        f"set 5e7: no shard holds images [5, 10) (after {shard_set.paths[0].name}, before {shard_set.paths[2].name})"
    )


def test_deleted_last_shard_is_missing_from_the_set_size(shard_set: Any) -> None:
    shard_set.paths[3].unlink()
    shard_set.paths[3].with_name(shard_set.paths[3].name + ".sha256").unlink()
    problems = verify_dir(shard_set.folder).problems
    assert [p.kind for p in problems] == ["missing"] and "[15, 20)" in problems[0].message


def test_deleted_shard_whose_sidecar_remains_is_missing(shard_set: Any) -> None:
    shard_set.paths[3].unlink()
    kinds = _kinds(shard_set.folder)
    assert ("missing", shard_set.paths[3].name + ".sha256") in kinds and len(kinds) == 2


def test_missing_sidecar_is_unverified(shard_set: Any) -> None:
    shard_set.paths[2].with_name(shard_set.paths[2].name + ".sha256").unlink()
    problems = verify_dir(shard_set.folder).problems
    assert [(p.kind, p.path) for p in problems] == [("unverified", shard_set.paths[2])]
    assert "no checksum sidecar" in problems[0].message


def test_stray_temporary_is_reported(shard_set: Any) -> None:
    stray = shard_set.folder / f".{shard_set.paths[0].name}.k3j2h1ab.tmp"
    stray.write_bytes(b"\x89HDF partial")
    assert _kinds(shard_set.folder) == [("temporary", stray.name)]
    assert verify_dir(shard_set.folder, ignore_tmp=True).ok


def test_swapped_shards_are_altered(shard_set: Any) -> None:
    a, b = shard_set.paths[0], shard_set.paths[1]
    tmp = a.with_name("swap")
    for suffix in ("", ".sha256"):
        os.replace(a.with_name(a.name + suffix), tmp)
        os.replace(b.with_name(b.name + suffix), a.with_name(a.name + suffix))
        os.replace(tmp, b.with_name(b.name + suffix))
    kinds = _kinds(shard_set.folder)
    assert ("altered", a.name) in kinds and ("altered", b.name) in kinds
    assert all(k == "altered" for k, _ in kinds)  # each sidecar names the other file as well


def test_other_hdf5_files_are_skipped_but_counted(shard_set: Any) -> None:
    with h5py.File(shard_set.folder / "cache.h5", "w") as f:
        f["images"] = [1, 2, 3]
    report = verify_dir(shard_set.folder)
    assert report.ok and report.skipped == [shard_set.folder / "cache.h5"]
    assert "1 other HDF5 file(s) skipped" in report.summary()


def test_sets_in_subfolders_are_verified_separately(
    shard_set: Any, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    sub = shard_set.folder / "other"
    sub.mkdir()
    write_shard(sub / "x.h5", make_arrays(0, 3), meta(0, config_hash="abc", set_size=6))
    report = verify_dir(shard_set.folder)
    assert report.sets == {"5e7": 4, "abc": 1}
    assert [(p.kind, p.path) for p in report.problems] == [("missing", sub)]


def test_verify_shard_for_a_single_output(shard_set: Any) -> None:
    assert verify_shard(shard_set.paths[0]) == []
    assert [p.kind for p in verify_shard(shard_set.folder / "absent.h5")] == ["missing"]


def test_cli_reports_one_line_per_problem_and_exits_nonzero(shard_set: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(shard_set.folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("OK ")

    with open(shard_set.paths[0], "r+b") as fh:
        fh.truncate(1000)
    shard_set.paths[2].with_name(shard_set.paths[2].name + ".sha256").unlink()
    (shard_set.folder / ".x.h5.abcdefgh.tmp").write_bytes(b"")
    assert main(["verify", str(shard_set.folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert (
        out[0] == "TEMPORARY .x.h5.abcdefgh.tmp: left by an interrupted write; the next write of that shard removes it"
    )
    assert out[1].startswith(f"TRUNCATED {shard_set.paths[0].name}: ")
    assert out[2].startswith(f"UNVERIFIED {shard_set.paths[2].name}: no checksum sidecar")
    assert out[3].startswith("FAILED ") and out[3].endswith("3 problem(s): 1 truncated, 1 unverified, 1 temporary")
    assert main(["verify", "--ignore-tmp", str(shard_set.folder)]) == 1


def test_verify_does_not_import_torch() -> None:
    code = "import sys; from medhpc.__main__ import main; main(['verify', '.']); assert 'torch' not in sys.modules"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO / "medhpc" / "store", timeout=60
    )
    assert run.returncode == 0, run.stderr  # starts in a fraction of a second on a login node


def test_cli_subprocess_exit_codes(shard_set: Any, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "medhpc", "verify", *args], capture_output=True, text=True, cwd=REPO, timeout=120
        )

    ok = run(str(shard_set.folder))
    assert ok.returncode == 0 and ok.stdout.startswith("OK "), ok.stderr
    shutil.copy(shard_set.paths[0], shard_set.paths[1])  # shard 1 replaced by a copy of shard 0
    bad = run(str(shard_set.folder))
    assert bad.returncode == 1
    assert any(
        line.startswith(f"ALTERED {shard_set.paths[1].name}: SHA-256 mismatch") for line in bad.stdout.splitlines()
    )
    assert any(line.startswith("MISSING ") and "[5, 10)" in line for line in bad.stdout.splitlines())
    assert any(line.startswith("OVERLAP ") for line in bad.stdout.splitlines())
    missing = run(str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not a folder" in missing.stderr and missing.stdout == ""


def test_a_changed_byte_anywhere_is_reported_never_a_crash(shard_set: Any, tmp_path: Path) -> None:
    src = shard_set.paths[0]
    original = src.read_bytes()
    for pos in np.linspace(0, len(original) - 1, 60).astype(int):
        damaged = bytearray(original)
        damaged[pos] ^= 0xFF
        src.write_bytes(bytes(damaged))
        report = verify_dir(shard_set.folder)  # must not raise, whatever the byte hit
        mine = [p for p in report.problems if p.path == src]
        assert mine and {p.kind for p in mine} <= {"altered", "truncated", "invalid"}, pos
    src.write_bytes(original)
    assert verify_dir(shard_set.folder).ok
