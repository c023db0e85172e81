"""The stratified split and its manifest."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from medhpc.data import DataError, Record, load_manifest, save_manifest, split_records
from medhpc.data.split import allocate, build_manifest, parse_fractions, validate_fractions


def make_records(n_per_label: dict[int, int]) -> list[Record]:
    return [
        Record(id=f"img{label}_{i:04d}", path=Path(f"/data/{label}/{i}.png"), label=label)
        for label, n in n_per_label.items()
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 20, 101, 1805])
@pytest.mark.parametrize("fractions", [(0.8, 0.05, 0.15), (0.7, 0.0, 0.3), (1 / 3, 1 / 3, 1 / 3), (0.0, 0.0, 1.0)])
def test_allocate_is_within_one_of_the_quota(n: int, fractions: tuple[float, float, float]) -> None:
    counts = allocate(n, fractions)
    assert sum(counts) == n
    for count, f in zip(counts, fractions, strict=True):
        assert abs(count - f * n) < 1


def test_split_is_stratified_disjoint_and_covering() -> None:
    records = make_records({0: 1805, 1: 370, 2: 7})
    splits = split_records(records, seed=0)
    ids = [r.id for part in splits.values() for r in part]
    assert sorted(ids) == sorted(r.id for r in records)  # covering, and disjoint
    assert len(set(ids)) == len(ids)
    per_label = Counter(r.label for r in records)
    for name, fraction in zip(("train", "val", "test"), (0.8, 0.05, 0.15), strict=True):
        got = Counter(r.label for r in splits[name])
        for label, total in per_label.items():
            assert abs(got[label] - fraction * total) < 1, (name, label)


def test_split_keeps_input_order_within_each_split() -> None:
    records = make_records({0: 30, 1: 30})
    for part in split_records(records, seed=3).values():
        assert part == sorted(part, key=records.index)


def test_split_is_deterministic_and_depends_on_seed_and_ids_only() -> None:
    records = make_records({0: 50, 1: 30})
    first = split_records(records, seed=7)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    again = split_records(shuffled, seed=7)
    as_sets = lambda s: {k: {r.id for r in v} for k, v in s.items()}  # noqa: E731
    assert as_sets(first) == as_sets(again)
    assert as_sets(split_records(records, seed=8)) != as_sets(first)


def test_split_matches_a_recorded_assignment() -> None:
    # Pinned so that a change to the hashing scheme, which would silently move
    # test images into training on other machines, cannot go unnoticed.
    records = make_records({0: 6, 1: 4})
    splits = split_records(records, seed=0, fractions=(0.5, 0.25, 0.25))
    assert {k: [r.id for r in v] for k, v in splits.items()} == {
        "train": ["img0_0000", "img0_0004", "img0_0005", "img1_0001", "img1_0003"],
        "val": ["img0_0001", "img0_0003", "img1_0000"],  # a tie between val and test goes to val
        "test": ["img0_0002", "img1_0002"],
    }


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.8, 0.2), "need 3 split fractions"),
        ((0.8, 0.3, -0.1), "non-negative"),
        ((0.8, 0.1, 0.2), "sum to 1"),
        ((0.8, float("nan"), 0.2), "finite"),
    ],
)
def test_bad_fractions_are_rejected(fractions: tuple[float, ...], message: str) -> None:
    with pytest.raises(DataError, match=message):
        validate_fractions(fractions)
    with pytest.raises(DataError, match=message):
        split_records(make_records({0: 3}), fractions=fractions)


def test_parse_fractions() -> None:
    assert parse_fractions("0.8,0.05,0.15") == (0.8, 0.05, 0.15)
    with pytest.raises(DataError, match="comma-separated numbers"):
        parse_fractions("0.8;0.2")


def test_manifest_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "data"
    records = [
        Record(id=f"c/{i}", path=root / "c" / f"{i}.png", label=i % 2,
               mask_path=root / "masks" / "c" / f"{i}.png" if i % 2 else None)
        for i in range(10)
    ]
    splits = split_records(records, seed=4)
    manifest = build_manifest("folder", root, splits, 4, (0.8, 0.05, 0.15), ["a", "b"])
    path = save_manifest(manifest, tmp_path / "m.json")
    loaded = load_manifest(path)
    assert loaded == manifest
    assert loaded.entries[0].path == f"{loaded.entries[0].id}.png"
    assert {e.id for e in loaded.entries if e.split == "test"} == {r.id for r in splits["test"]}
    assert [e.mask for e in loaded.entries if e.mask] and all(
        e.mask == f"masks/{e.id}.png" for e in loaded.entries if e.mask
    )
    data = json.loads(path.read_text())
    assert {"kind", "root", "seed", "fractions", "entries"} <= data.keys()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: json.dumps({k: v for k, v in d.items() if k != "seed"}), "missing key 'seed'"),
        (lambda d: json.dumps({**d, "fractions": [0.5, 0.5, 0.5]}), "sum to 1"),
        (lambda d: json.dumps({**d, "entries": [{**d["entries"][0], "split": "dev"}]}), "entry 0: split 'dev'"),
        (lambda d: json.dumps({**d, "entries": d["entries"][:1] * 2}), "duplicate id"),
    ],
)
def test_load_manifest_names_the_file_and_the_problem(tmp_path: Path, edit, message: str) -> None:
    manifest = build_manifest(
        "folder", tmp_path, split_records(make_records({0: 4}), seed=0), 0, (0.8, 0.05, 0.15), ["a"]
    )
    good = json.loads(manifest.to_json())
    path = tmp_path / "broken.manifest.json"
    path.write_text(edit(good))
    with pytest.raises(DataError, match=message) as info:
        load_manifest(path)
    assert str(path) in str(info.value)


def test_load_manifest_of_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist: .*nope.json"):
        load_manifest(tmp_path / "nope.json")
