"""A shard appears under its name only when complete; a crash leaves the old one untouched; bad
inputs are refused with a message naming the field or file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medhpc.store import (
    ShardError,
    ShardMeta,
    ShardReader,
    ShardWriter,
    read_sidecar,
    sha256_file,
    verify_dir,
    verify_shard,
    write_shard,
)

REPO = Path(__file__).resolve().parents[2]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_exception_mid_write_leaves_no_file_and_the_old_shard_untouched(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    path = tmp_path / "s.h5"
    write_shard(path, make_arrays(0, 6), meta(0))
    before, sidecar_before = path.read_bytes(), path.with_name("s.h5.sha256").read_text()
    with pytest.raises(RuntimeError, match="attack crashed"), ShardWriter(path, meta(0)) as w:
        w.append(make_arrays(0, 3, seed=1))  # data reaches the temporary file
        assert any(n.endswith(".tmp") for n in _listing(tmp_path))
        raise RuntimeError("attack crashed")
    assert _listing(tmp_path) == ["s.h5", "s.h5.sha256"]
    assert path.read_bytes() == before and path.with_name("s.h5.sha256").read_text() == sidecar_before
    assert verify_shard(path) == []


def test_bad_second_batch_aborts_the_write_without_a_partial_shard(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    path = tmp_path / "s.h5"
    bad = make_arrays(3, 3)
    bad["l2"] = bad["l2"][:2]
    with pytest.raises(ShardError, match="'l2'"), ShardWriter(path, meta(0)) as w:
        w.append(make_arrays(0, 3))
        w.append(bad)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("field", ["const", "queries", "min_norm", "broken_by"])
def test_an_attacks_own_field_in_one_batch_only_aborts_the_write_naming_it(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta], field: str
) -> None:
    path = tmp_path / "s.h5"
    first = make_arrays(0, 3)
    first[field] = np.zeros(3, dtype=np.int64 if field in ("queries", "broken_by") else np.float32)
    with pytest.raises(ShardError, match=f"field '{field}' must be given in every batch or in none"):
        with ShardWriter(path, meta(0)) as w:
            w.append(first)
            w.append(make_arrays(3, 3))
    assert _listing(tmp_path) == []


def test_keyboard_interrupt_mid_write_leaves_nothing(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    with pytest.raises(KeyboardInterrupt), ShardWriter(tmp_path / "s.h5", meta(0)) as w:
        w.append(make_arrays(0, 3))
        raise KeyboardInterrupt
    assert _listing(tmp_path) == []


_KILLED_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from medhpc.attacks.config import AttackConfig
    from medhpc.store import ShardMeta, ShardWriter
    meta = ShardMeta(AttackConfig("fgsm", eps=0.02), "test", 0, model_hash="m", config_hash="ab")
    rng = np.random.default_rng(0)
    with ShardWriter(sys.argv[1], meta) as w:
        for i in range(10**6):  # until killed
            n = 16
            w.append({
                "x_adv": rng.random((n, 3, 64, 64), dtype=np.float32), "index": np.arange(i * n, i * n + n),
                "ids": [str(j) for j in range(i * n, i * n + n)], "labels": np.zeros(n, int),
                "attack_labels": np.zeros(n, int), "clean_pred": np.zeros(n, int), "adv_pred": np.ones(n, int),
                "clean_probs": np.full((n, 2), 0.5, np.float32), "adv_probs": np.full((n, 2), 0.5, np.float32),
                "l2": np.zeros(n, np.float32), "linf": np.zeros(n, np.float32), "success": np.ones(n, bool),
            })
    """
)


def test_sigkill_mid_write_leaves_a_temporary_that_verify_reports_and_a_rerun_removes(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    path = tmp_path / "ab-00000000-00000004.h5"
    old = write_shard(path, make_arrays(0, 4), meta(0, config_hash="ab", set_size=None))
    old_digest = sha256_file(path)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            tmps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            if tmps and tmps[0].stat().st_size > 2_000_000:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "writer exited"
            time.sleep(0.05)
        else:
            pytest.fail("the writer never got going")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # The old, complete shard and its checksum are still there, untouched.
    assert sha256_file(path) == old_digest == read_sidecar(path)[0]
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1
    report = verify_dir(tmp_path)
    assert [p.kind for p in report.problems] == ["temporary"]
    assert report.verified == 1
    # A rerun of the same shard clears the killed writer's temporary.
    write_shard(path, make_arrays(0, 4, seed=3), meta(0, config_hash="ab", set_size=None))
    assert _listing(tmp_path) == [path.name, path.name + ".sha256"]
    assert verify_dir(tmp_path).ok and old.path == path


def test_batches_stream_into_one_shard(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    parts = [make_arrays(5, 3), make_arrays(8, 1), make_arrays(9, 4)]
    with ShardWriter(tmp_path / "s.h5", meta(5)) as w:
        for part in parts:
            w.append({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in part.items()})
    assert w.info is not None and (w.info.start, w.info.stop) == (5, 13)
    got = ShardReader(w.info.path).read(["x_adv", "index", "ids"])
    np.testing.assert_array_equal(got["x_adv"], np.concatenate([p["x_adv"] for p in parts]))
    assert got["index"].tolist() == list(range(5, 13))
    assert list(got["ids"]) == sum((p["ids"] for p in parts), [])


def _edit(field: str, value: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        d[field] = value(d)

    return apply


BAD_ARRAYS = [
    ("length", _edit("l2", lambda d: d["l2"][:-1]), "field 'l2' has 3 images"),
    ("probs length", _edit("adv_probs", lambda d: d["adv_probs"][:2]), "field 'adv_probs' has 2 images"),
    ("ids length", _edit("ids", lambda d: d["ids"][:2]), "field 'ids' has 2 images"),
    ("float labels", _edit("labels", lambda d: d["labels"].astype(np.float32)), "field 'labels' must hold integer"),
    ("int success", _edit("success", lambda d: d["success"].astype(np.int64)), "field 'success' must hold boolean"),
    ("uint8 images", _edit("x_adv", lambda d: (d["x_adv"] * 255).astype(np.uint8)), "field 'x_adv' must hold floating"),
    ("nan images", _edit("x_adv", lambda d: d["x_adv"] * np.nan), "field 'x_adv' holds NaN"),
    ("missing field", lambda d: d.pop("adv_probs"), "missing field 'adv_probs'"),
    ("unknown field", _edit("adv_prob", lambda d: d["adv_probs"]), "unknown field 'adv_prob'"),
    ("index gap", _edit("index", lambda d: d["index"] + np.array([0, 0, 1, 1])), "field 'index' must continue"),
    ("label range", _edit("labels", lambda d: d["labels"] * 0 + 2), "field 'labels' holds class 2, outside"),
    (
        "class count",
        _edit("adv_probs", lambda d: np.full((4, 3), 1 / 3, np.float32)),
        "field 'adv_probs' has 3 classes",
    ),
    ("id type", _edit("ids", lambda d: [1, 2, 3, 4]), "field 'ids' must hold strings"),
    (
        "draws without samples",
        _edit("clean_sample_probs", lambda d: np.full((2, 4, 2), 0.5, np.float32)),
        "meta.samples is 0",
    ),
]


@pytest.mark.parametrize("case,edit,message", BAD_ARRAYS, ids=[c[0] for c in BAD_ARRAYS])
def test_bad_arrays_are_refused_naming_the_field(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta],
    case: str, edit: Callable[[dict[str, Any]], None], message: str,
) -> None:  # fmt: skip
    data = make_arrays(0, 4)
    edit(data)
    with pytest.raises(ShardError, match=message.replace("(", r"\(")):
        write_shard(tmp_path / "s.h5", data, meta(0))
    assert _listing(tmp_path) == []


def test_bad_paths_and_meta_are_refused_naming_them(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    data = make_arrays(0, 4)
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ShardError, match=f"folder {missing} does not exist"):
        write_shard(missing / "s.h5", data, meta(0))
    assert not missing.exists()
    with pytest.raises(ShardError, match=r"must end in \.h5"):
        write_shard(tmp_path / "s.hdf5", data, meta(0))
    with pytest.raises(ShardError, match="model_hash"):
        write_shard(tmp_path / "s.h5", data, meta(0, model_hash=None))
    with pytest.raises(ShardError, match="meta.split"):
        write_shard(tmp_path / "s.h5", data, meta(0, split="tests"))
    with pytest.raises(ShardError, match="image_dtype"):
        write_shard(tmp_path / "s.h5", data, meta(0), image_dtype="uint8")
    with pytest.raises(ShardError, match="set_size"):
        write_shard(tmp_path / "s.h5", data, meta(0, set_size=3))
    # A mapping is not an attack config: the store refuses it. Validating attack configs is the
    # attacks package's business (AttackConfig("pgd") without eps raises there).
    with pytest.raises(ShardError, match="meta.attack"):
        write_shard(tmp_path / "s.h5", data, meta(0, attack={"attack": "pgd"}))
    with pytest.raises(ShardError, match="missing field 'clean_sample_probs'"):
        write_shard(tmp_path / "s.h5", data, meta(0, samples=4))
    with pytest.raises(ShardError, match="no images were appended"), ShardWriter(tmp_path / "s.h5", meta(0)):
        pass
    assert _listing(tmp_path) == []


def test_source_date_epoch_makes_reruns_byte_identical(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The same inputs written twice under SOURCE_DATE_EPOCH give the same bytes and sidecar
    (how a refactoring is checked to leave the sweep's outputs unchanged)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    digests = []
    for k in range(2):
        (tmp_path / str(k)).mkdir()
        info = write_shard(tmp_path / str(k) / "s.h5", make_arrays(0, 5), meta(0))
        assert info.attrs["created"] == "2023-11-14T22:13:20+00:00"
        digests.append(read_sidecar(info.path)[0])
        time.sleep(1.05)  # a wall-clock timestamp would differ now
    assert digests[0] == digests[1]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(ShardError, match="SOURCE_DATE_EPOCH"):
        write_shard(tmp_path / "bad.h5", make_arrays(0, 5), meta(0))
    assert not (tmp_path / "bad.h5").exists()
