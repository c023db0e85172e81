"""A set of shards reads as one table in index order, lazily, also from DataLoader workers; sets
that do not fit together are refused, holes are reported."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medhpc.attacks.config import AttackConfig
from medhpc.config import from_dict
from medhpc.store import ShardError, ShardMeta, ShardReader, write_shard


def test_reads_several_shards_in_index_order(shard_set: Any) -> None:
    # Given out of order: the reader sorts by index range.
    reader = ShardReader(list(reversed(shard_set.paths)))
    assert len(reader) == 20 and [s.start for s in reader.shards] == [0, 5, 10, 15]
    assert reader.index.tolist() == list(range(20))
    everything = reader.read()
    for name in ("x_adv", "labels", "clean_probs", "success"):
        np.testing.assert_array_equal(everything[name], np.concatenate([a[name] for a in shard_set.arrays]))
    assert list(everything["ids"]) == sum((a["ids"] for a in shard_set.arrays), [])
    items = list(reader)
    assert [int(i["index"]) for i in items] == list(range(20))
    np.testing.assert_array_equal(reader[13]["x_adv"], shard_set.arrays[2]["x_adv"][3])
    assert reader[-1]["ids"] == shard_set.arrays[3]["ids"][-1]
    with pytest.raises(IndexError):
        reader[20]


def test_batches_span_shard_boundaries(shard_set: Any) -> None:
    reader = ShardReader(shard_set.folder)
    batches = list(reader.iter_batches(7, ["index", "x_adv"]))
    assert [len(b["index"]) for b in batches] == [7, 7, 6]
    assert np.concatenate([b["index"] for b in batches]).tolist() == list(range(20))
    part = reader.read_range(3, 12, ["labels"])["labels"]
    np.testing.assert_array_equal(part, np.concatenate([a["labels"] for a in shard_set.arrays])[3:12])


def test_metadata_per_shard_and_for_the_set(shard_set: Any) -> None:
    reader = ShardReader(shard_set.folder)
    assert reader.config_hash == "5e7" and from_dict(AttackConfig, reader.attack_config) == AttackConfig(
        "pgd", eps=0.02, steps=3
    )
    assert reader.shard_of(12).path == shard_set.paths[2]
    assert [s.attrs["start"] for s in reader.shards] == [0, 5, 10, 15]
    assert reader.attrs["model_hash"] == "model01" and reader.missing == []


def test_files_open_only_when_read(shard_set: Any) -> None:
    reader = ShardReader(shard_set.folder, max_open=2)
    assert len(reader._files) == 0  # construction reads attributes, keeps nothing open
    reader.read(["labels"])
    assert len(reader._files) == 2  # at most max_open at once
    clone = pickle.loads(pickle.dumps(reader))
    assert len(clone._files) == 0 and clone[19]["index"] == 19
    reader.close()


@pytest.mark.timeout(120)
def test_dataloader_workers_read_every_image_once_in_order(shard_set: Any) -> None:
    reader = ShardReader(shard_set.folder, fields=["x_adv", "index", "ids", "success", "clean_probs"])
    assert reader[0]["index"] == 0  # a handle open in the parent: forked workers must not use it
    # A map-style dataset by duck typing (len and getitem): ShardReader does not import torch.
    loader: DataLoader[dict[str, Any]] = DataLoader(reader, batch_size=3, num_workers=2, shuffle=False)  # type: ignore[arg-type]
    batches = list(loader)
    index = torch.cat([b["index"] for b in batches])
    assert index.tolist() == list(range(20))
    x = torch.cat([b["x_adv"] for b in batches])
    np.testing.assert_array_equal(x.numpy(), np.concatenate([a["x_adv"] for a in shard_set.arrays]))
    assert batches[0]["ids"] == shard_set.arrays[0]["ids"][:3]
    assert batches[0]["success"].dtype == torch.bool and batches[0]["clean_probs"].shape == (3, 2)


def test_stochastic_fields_read_per_image(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    data = [make_arrays(s, 4, samples=12) for s in (0, 4)]
    for s, d in zip((0, 4), data, strict=True):
        write_shard(tmp_path / f"{s}.h5", d, meta(s, samples=12, set_size=8))
    reader = ShardReader(tmp_path)
    draws = reader.read(["adv_sample_probs"])["adv_sample_probs"]
    assert draws.shape == (12, 8, 2)
    np.testing.assert_array_equal(draws, np.concatenate([d["adv_sample_probs"] for d in data], axis=1))
    np.testing.assert_array_equal(reader[5]["clean_sample_probs"], data[1]["clean_sample_probs"][:, 1])


def test_shards_of_different_sets_or_configs_are_refused(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    write_shard(tmp_path / "a.h5", make_arrays(0, 5), meta(0))
    write_shard(tmp_path / "b.h5", make_arrays(5, 5), meta(5, config_hash="0a1"))
    with pytest.raises(ShardError, match="2 sets"):
        ShardReader(tmp_path)
    assert len(ShardReader(tmp_path, config_hash="5e7")) == 5
    # Same set hash but another attack: a mislabelled set.
    write_shard(tmp_path / "b.h5", make_arrays(5, 5), meta(5, attack=AttackConfig("fgsm", eps=0.02)))
    with pytest.raises(ShardError, match=r"b\.h5: attack_hash .* differs"):
        ShardReader(tmp_path)
    write_shard(tmp_path / "b.h5", make_arrays(5, 5), meta(5, model_hash="model02"))
    with pytest.raises(ShardError, match="model_hash 'model02' differs"):
        ShardReader(tmp_path)


def test_overlaps_are_refused_and_gaps_reported(
    tmp_path: Path,
    make_arrays: Callable[..., dict[str, Any]],
    meta: Callable[..., ShardMeta],
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_shard(tmp_path / "a.h5", make_arrays(0, 5), meta(0))
    write_shard(tmp_path / "b.h5", make_arrays(3, 5), meta(3))
    with pytest.raises(ShardError, match=r"b\.h5 \(images \[3, 8\)\) overlaps .*a\.h5"):
        ShardReader(tmp_path)
    write_shard(tmp_path / "b.h5", make_arrays(10, 5), meta(10))
    with caplog.at_level(logging.WARNING):
        reader = ShardReader(tmp_path)
    assert reader.missing == [(5, 10), (15, 20)]
    assert "no shard holds images [5, 10), [15, 20)" in caplog.text
    assert reader.index.tolist() == list(range(5)) + list(range(10, 15))
    with pytest.raises(ShardError, match=r"no shard holds images \[5, 10\)"):
        ShardReader(tmp_path, strict=True)


def test_newer_schema_and_foreign_files_are_refused(
    tmp_path: Path, make_arrays: Callable[..., dict[str, Any]], meta: Callable[..., ShardMeta]
) -> None:
    path = tmp_path / "a.h5"
    write_shard(path, make_arrays(0, 5), meta(0))
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = np.int64(99)
    with pytest.raises(ShardError, match=r"a\.h5: schema version 99 is newer"):
        ShardReader(path)
    other = tmp_path / "cache.h5"
    with h5py.File(other, "w") as f:
        f["images"] = np.zeros(3)
    with pytest.raises(ShardError, match=r"cache\.h5: not a medhpc shard"):
        ShardReader(other)
    with pytest.raises(ShardError, match="no such shard or folder"):
        ShardReader(tmp_path / "nope.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no shards"):
        ShardReader(tmp_path / "empty")


def test_verify_option_refuses_altered_or_unverified_shards(shard_set: Any) -> None:
    assert len(ShardReader(shard_set.folder, verify=True)) == 20
    with h5py.File(shard_set.paths[1], "r+") as f:
        f.attrs["run"] = "elsewhere"
    with pytest.raises(ShardError, match=r"SHA-256 does not match"):
        ShardReader(shard_set.folder, verify=True)
    shard_set.paths[2].with_name(shard_set.paths[2].name + ".sha256").unlink()
    with pytest.raises(ShardError, match="no valid checksum sidecar"):
        ShardReader(shard_set.paths[2:], verify=True)


def test_unknown_fields_are_refused(shard_set: Any) -> None:
    with pytest.raises(ShardError, match="field 'const' not in these shards"):
        ShardReader(shard_set.folder, fields=["x_adv", "const"])
    with pytest.raises(ShardError, match="field 'advprobs'"):
        ShardReader(shard_set.folder).read(["advprobs"])
