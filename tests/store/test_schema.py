"""A shard holds every field exactly as given, in the documented layout, readable without medhpc."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from medhpc import __version__
from medhpc.attacks.config import AttackConfig
from medhpc.config import config_hash, from_dict, to_dict
from medhpc.store import (
    FIELDS,
    SCHEMA_VERSION,
    ShardMeta,
    ShardReader,
    read_info,
    read_sidecar,
    schema,
    sha256_file,
    write_shard,
)

REPO = Path(__file__).resolve().parents[2]


def _same(a: Any, b: Any) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(a, b.astype(a.dtype))  # NaN == NaN here
    else:
        assert a.tolist() == b.tolist()


@pytest.mark.parametrize("samples,const", [(0, False), (12, True)])
def test_every_field_round_trips_exactly(
    tmp_path: Path,
    make_arrays: Callable[..., dict[str, Any]],
    meta: Callable[..., ShardMeta],
    samples: int,
    const: bool,
) -> None:
    data = make_arrays(10, 6, samples=samples, const=const, classes=3)
    info = write_shard(tmp_path / "s.h5", data, meta(10, samples=samples))
    assert (info.start, info.stop, info.samples, info.classes) == (10, 16, samples, 3)
    assert set(info.fields) == set(data)
    back = ShardReader(tmp_path / "s.h5").read()
    assert set(back) == set(data)
    for name, value in data.items():
        _same(back[name], value)
    assert back["x_adv"].dtype == np.float32 and back["success"].dtype == np.bool_
    assert list(back["ids"]) == data["ids"]  # non-ASCII ids survive


def test_attributes_record_attack_model_hashes_seed_and_version(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    m = meta(0, meta={"job": "attack-1"})
    info = write_shard(tmp_path / "s.h5", make_arrays(0, 4), m)
    a = info.attrs
    assert a["format"] == "medhpc.shard" and a["schema_version"] == SCHEMA_VERSION
    assert a["medhpc_version"] == __version__
    assert a["attack_config"] == to_dict(m.attack) and a["attack_hash"] == config_hash(m.attack)
    assert from_dict(AttackConfig, info.attrs["attack_config"]) == m.attack
    assert (a["config_hash"], a["model_hash"], a["run"], a["dataset"]) == ("5e7", "model01", "runs/m1", "cache.h5")
    assert (a["split"], a["start"], a["stop"], a["set_size"], a["seed"]) == ("test", 0, 4, 20, 7)
    assert a["meta"] == {"job": "attack-1"} and a["model_config"] is None
    assert a["created"].endswith("+00:00")


def test_default_set_hash_changes_with_what_changes_the_content(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    data = make_arrays(0, 3)
    variants: list[tuple[dict[str, Any], str]] = [
        ({}, "float32"), ({}, "float16"), ({"seed": 8}, "float32"), ({"model_hash": "m2"}, "float32"),
    ]  # fmt: skip
    h = [
        write_shard(tmp_path / f"{i}.h5", data, meta(0, config_hash=None, **kw), image_dtype=dt).config_hash
        for i, (kw, dt) in enumerate(variants)
    ]
    assert len(set(h)) == 4
    again = write_shard(tmp_path / "again.h5", data, meta(0, config_hash=None, set_size=40))
    assert again.config_hash == h[0]  # set_size does not change what a shard holds


def test_sidecar_is_a_sha256sum_line_written_after_the_shard(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    path = tmp_path / "s.h5"
    write_shard(path, make_arrays(0, 3), meta(0))
    digest, name = read_sidecar(path)
    assert name == "s.h5" and digest == sha256_file(path)
    out = subprocess.run(["sha256sum", "-c", "s.h5.sha256"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "s.h5: OK" in out.stdout
    assert path.stat().st_mode & 0o044, "shards must be readable by others on a shared cluster"


def test_plain_h5py_reads_every_field_and_attribute_without_medhpc(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    data = make_arrays(0, 5, samples=12, const=True)
    write_shard(tmp_path / "s.h5", data, meta(0, samples=12))
    code = (
        "import json, sys, h5py, numpy as np\n"
        "f = h5py.File(sys.argv[1], 'r')\n"
        "out = {k: (f[k].asstr()[()].tolist() if k == 'ids' else np.nan_to_num(f[k][()], nan=-1).tolist())\n"
        "       for k in f}\n"
        "out['attrs'] = {k: (v.item() if hasattr(v, 'item') else v) for k, v in f.attrs.items()}\n"
        "out['attack'] = json.loads(f.attrs['attack_config'])\n"
        "x = f['x_adv']\n"
        "out['filters'] = [x.compression, x.shuffle, x.fletcher32, x.chunks is not None]\n"
        "assert not any(m.startswith('medhpc') or m == 'torch' for m in sys.modules), 'imported medhpc/torch'\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s.h5")], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert set(got) - {"attrs", "attack", "filters"} == set(data)
    assert got["ids"] == data["ids"]
    for name, value in data.items():
        if name != "ids":
            want = np.nan_to_num(np.asarray(value, dtype=float), nan=-1)
            np.testing.assert_array_equal(np.asarray(got[name], dtype=float), want, err_msg=name)
    assert got["attrs"]["schema_version"] == SCHEMA_VERSION and got["attack"]["attack"] == "pgd"
    assert got["filters"] == ["gzip", True, True, True]


def test_float16_images_halve_the_size_and_round_within_half_a_step(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    data = make_arrays(0, 64, size=32)
    f32 = write_shard(tmp_path / "a.h5", data, meta(0, set_size=None))
    f16 = write_shard(tmp_path / "b.h5", data, meta(0, set_size=None), image_dtype="float16")
    x32 = ShardReader(f32.path).read(["x_adv"])["x_adv"]
    x16 = ShardReader(f16.path).read(["x_adv"])["x_adv"]
    assert x32.dtype == np.float32 and x16.dtype == np.float16 and f16.image_dtype == "float16"
    np.testing.assert_array_equal(x32, data["x_adv"])
    # Spacing 2**-11 in [0.5, 1): rounding moves a pixel by at most 2**-12.
    assert np.abs(x16.astype(np.float32) - data["x_adv"]).max() <= 2.0**-12
    assert f16.path.stat().st_size < 0.65 * f32.path.stat().st_size


@pytest.mark.parametrize("level", [1, 0])
def test_chunked_compressed_and_checksummed(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta], level: int
) -> None:
    data = make_arrays(0, 5, samples=3)
    write_shard(tmp_path / "s.h5", data, meta(0, samples=3), compression=level)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for name in f:
            ds = f[name]
            assert ds.chunks is not None and ds.fletcher32 and ds.shuffle, name
            assert ds.compression == ("gzip" if level else None), name
    np.testing.assert_array_equal(ShardReader(tmp_path / "s.h5").read(["x_adv"])["x_adv"], data["x_adv"])


def test_docstring_table_lists_every_field_and_attribute() -> None:
    doc = schema.__doc__ or ""
    for name in FIELDS:
        assert f"``{name}``" in doc, name
    for name in schema.ATTRS:
        assert f"``{name}``" in doc, name
    assert read_info.__doc__
