"""Read shards: one shard's facts (:func:`read_info`) and a lazy reader over a set (:class:`ShardReader`).

A set of shards (one ``config_hash``) is read as one table in split-index order. Files are
opened only when data is read, separately in each process, so a reader can be handed to
``torch.utils.data.DataLoader`` workers; constructing it reads only the attributes and
shapes of each shard, never their data.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medhpc.store.integrity import ShardError, read_sidecar, sha256_file
from medhpc.store.schema import ATTRS, FIELDS, FORMAT, JSON_ATTRS, REQUIRED, SAMPLE_FIELDS, SCHEMA_VERSION

log = logging.getLogger(__name__)

#: HDF5 chunk cache per open dataset when reading (HDF5's default is 1 MiB).
CHUNK_CACHE_BYTES = 4 * 1024 * 1024


def open_shard(path: Path | str) -> h5py.File:
    """Open a shard read-only, turning h5py's errors into a :class:`ShardError` that says what
    is wrong with the file (missing, truncated, not HDF5)."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard does not exist")
    try:
        return h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        text = str(exc)
        if "truncated" in text:
            raise ShardError(f"{path}: truncated ({text})") from None
        raise ShardError(f"{path}: cannot open as HDF5, truncated or not a shard ({text})") from None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class ShardInfo:
    """What one shard holds, from its attributes and dataset shapes (no data read).

    ``attrs`` has every attribute as plain Python, the JSON ones (``attack_config``,
    ``model_config``, ``meta``) decoded.
    """

    path: Path
    start: int
    stop: int
    config_hash: str
    attack_hash: str
    model_hash: str
    split: str
    schema_version: int
    samples: int
    classes: int
    image_shape: tuple[int, ...]
    image_dtype: str
    fields: tuple[str, ...]
    attrs: dict[str, Any] = field(repr=False)

    @property
    def n(self) -> int:
        """Number of images in the shard."""
        return self.stop - self.start


def info_from_file(h5: h5py.File, path: Path | str) -> ShardInfo:
    """Check a shard's attributes and dataset shapes against the schema; see :func:`read_info`."""
    path = Path(path)
    fmt = _plain(h5.attrs.get("format"))
    if fmt != FORMAT:
        raise ShardError(f"{path}: not a medhpc shard (format attribute {fmt!r}, expected {FORMAT!r})")
    version = _plain(h5.attrs.get("schema_version"))
    if not isinstance(version, int):
        raise ShardError(f"{path}: schema_version attribute missing or not an integer ({version!r})")
    if version > SCHEMA_VERSION:
        raise ShardError(
            f"{path}: schema version {version} is newer than this medhpc reads ({SCHEMA_VERSION}); upgrade medhpc"
        )
    if version < 1:
        raise ShardError(f"{path}: invalid schema version {version}")
    attrs: dict[str, Any] = {}
    for key, tp in ATTRS.items():
        if key not in h5.attrs:
            raise ShardError(f"{path}: attribute {key!r} missing")
        value = _plain(h5.attrs[key])
        if not isinstance(value, tp) or isinstance(value, bool):
            raise ShardError(f"{path}: attribute {key!r} must be {tp.__name__}, got {type(value).__name__}")
        attrs[key] = value
    for key in JSON_ATTRS:
        try:
            attrs[key] = json.loads(attrs[key])
        except json.JSONDecodeError as exc:
            raise ShardError(f"{path}: attribute {key!r} is not valid JSON: {exc}") from None
    for key, value in h5.attrs.items():  # attributes a later writer added
        attrs.setdefault(key, _plain(value))
    start, stop = attrs["start"], attrs["stop"]
    if not 0 <= start < stop:
        raise ShardError(f"{path}: invalid slice start={start}, stop={stop}")
    n, samples, classes = stop - start, attrs["samples"], attrs["classes"]
    for name in REQUIRED + (SAMPLE_FIELDS if samples else ()):
        if name not in h5:
            raise ShardError(f"{path}: dataset {name!r} missing")
    present = tuple(name for name in FIELDS if name in h5)
    for name in present:
        f, shape = FIELDS[name], h5[name].shape
        expected_len = len(f.axes) if name != "x_adv" else len(shape)
        ok = len(shape) == expected_len and len(shape) >= 1 and shape[f.image_axis] == n
        ok = ok and ("C" not in f.axes or shape[f.axes.index("C")] == classes)
        ok = ok and ("S" not in f.axes or shape[0] == samples)
        if not ok or (name == "x_adv" and len(shape) < 2):
            raise ShardError(
                f"{path}: dataset {name!r} has shape {shape}, expected ({', '.join(f.axes)}) with N={n}, "
                f"C={classes}, S={samples}"
            )
    return ShardInfo(
        path=path,
        start=start,
        stop=stop,
        config_hash=attrs["config_hash"],
        attack_hash=attrs["attack_hash"],
        model_hash=attrs["model_hash"],
        split=attrs["split"],
        schema_version=version,
        samples=samples,
        classes=classes,
        image_shape=tuple(h5["x_adv"].shape[1:]),
        image_dtype=attrs["image_dtype"],
        fields=present,
        attrs=attrs,
    )


def read_info(path: Path | str) -> ShardInfo:
    """A shard's facts from its attributes and shapes, checked against the schema.

    Raises
    ------
    ShardError
        The file is missing, truncated, not HDF5, not a shard, of a newer schema version, or
        its datasets do not have the shapes its attributes promise. The message names the file.
    """
    with open_shard(path) as h5:
        try:
            return info_from_file(h5, path)
        except ShardError:
            raise
        except Exception as exc:  # noqa: BLE001 - damaged HDF5 metadata raises KeyError, RuntimeError...
            raise ShardError(f"{path}: damaged HDF5 structure ({type(exc).__name__}: {exc})") from None


def _collect(source: Path | str | Sequence[Path | str]) -> list[Path]:
    if isinstance(source, (str, Path)):
        source = Path(source)
        if source.is_dir():
            paths = sorted(p for p in source.glob("*.h5") if not p.name.startswith("."))
            if not paths:
                raise ShardError(f"{source}: no shards (*.h5) in this folder")
            return paths
        if not source.exists():
            raise ShardError(f"{source}: no such shard or folder")
        return [source]
    paths = [Path(p) for p in source]
    if not paths:
        raise ShardError("no shard paths given")
    return paths


def find_gaps(ranges: Sequence[tuple[int, int]], set_size: int = -1) -> list[tuple[int, int]]:
    """Index ranges ``[a, b)`` of ``[0, set_size)`` that sorted, non-overlapping ``ranges`` miss
    (up to the last range's stop when ``set_size`` is -1, unknown)."""
    gaps, at = [], 0
    for start, stop in sorted(ranges):
        if start > at:
            gaps.append((at, start))
        at = max(at, stop)
    if set_size > at:
        gaps.append((at, set_size))
    return gaps


_AGREE = ("attack_hash", "model_hash", "split", "samples", "classes", "image_shape", "image_dtype")


class ShardReader:
    """A lazy, read-only view of one set of shards as one table in split-index order.

    A map-style dataset (``len`` and ``reader[i]``) for ``torch.utils.data.DataLoader``,
    without importing torch itself, so that ``verify`` and outside tools stay light.
    ``reader[i]`` is the ``i``-th image of the set (in index order) as a dict of fields:
    numpy arrays (``x_adv`` (3, H, W), ``clean_probs`` (C,), per-draw fields (S, C)), numpy
    scalars and ``ids`` as a str, which ``DataLoader``'s default collation stacks. ``read``
    concatenates whole fields, ``iter_batches`` streams them, ``len`` counts images.

    Checks on construction (attributes only): every shard is of a known schema version;
    all shards are of one set (``config_hash``) and agree on attack, model, split, draws,
    classes and image shape; no two overlap (an error naming both). Missing index ranges are
    logged and listed in :attr:`missing` (an error with ``strict``). A shard without a
    checksum sidecar is logged as unverified; ``verify=True`` also hashes every file and
    refuses a missing or mismatching checksum (reads every byte: use ``python -m medhpc
    verify`` for whole folders).

    Parameters
    ----------
    source : a folder (its ``*.h5``), one shard, or a list of shards.
    config_hash : which set to read when the folder holds several.
    fields : fields ``reader[i]`` returns (default: all the shards have).
    verify : check each shard's SHA-256 sidecar now.
    strict : missing index ranges are an error, not a warning.
    max_open : files each process keeps open at once.
    """

    def __init__(
        self,
        source: Path | str | Sequence[Path | str],
        *,
        config_hash: str | None = None,
        fields: Sequence[str] | None = None,
        verify: bool = False,
        strict: bool = False,
        max_open: int = 16,
    ) -> None:
        infos = [read_info(p) for p in _collect(source)]
        hashes = sorted({i.config_hash for i in infos})
        if config_hash is not None:
            infos = [i for i in infos if i.config_hash == config_hash]
            if not infos:
                raise ShardError(f"no shard of set {config_hash!r} in {source}; sets: {', '.join(hashes)}")
        elif len(hashes) > 1:
            raise ShardError(f"shards of {len(hashes)} sets ({', '.join(hashes)}) given; pick one with config_hash=")
        infos.sort(key=lambda i: (i.start, i.stop))
        first = infos[0]
        for info in infos[1:]:
            for key in _AGREE:
                if getattr(info, key) != getattr(first, key):
                    raise ShardError(
                        f"{info.path}: {key} {getattr(info, key)!r} differs from {getattr(first, key)!r} "
                        f"of {first.path}, though both claim set {first.config_hash}"
                    )
        for a, b in itertools.pairwise(infos):
            if b.start < a.stop:
                raise ShardError(
                    f"{b.path} (images [{b.start}, {b.stop})) overlaps {a.path} (images [{a.start}, {a.stop}))"
                )
        set_size = max(i.attrs["set_size"] for i in infos)
        self.missing: list[tuple[int, int]] = find_gaps([(i.start, i.stop) for i in infos], set_size)
        if self.missing:
            text = ", ".join(f"[{a}, {b})" for a, b in self.missing)
            if strict:
                raise ShardError(f"set {first.config_hash}: no shard holds images {text}")
            log.warning("set %s: no shard holds images %s", first.config_hash, text)
        unverified = []
        for info in infos:
            try:
                digest, _ = read_sidecar(info.path)
            except (FileNotFoundError, ShardError, UnicodeDecodeError) as exc:
                if verify:
                    raise ShardError(f"{info.path}: no valid checksum sidecar, unverified shard ({exc})") from None
                unverified.append(info.path)
                continue
            if verify and sha256_file(info.path) != digest:
                raise ShardError(f"{info.path}: SHA-256 does not match its sidecar (altered shard)")
        if unverified:
            log.warning(
                "%d shard(s) without a valid checksum sidecar (unverified), e.g. %s", len(unverified), unverified[0]
            )
        chosen = tuple(fields) if fields is not None else first.fields
        if not chosen:
            raise ShardError("fields must name at least one field")
        for name in chosen:
            if name not in first.fields:
                raise ShardError(f"field {name!r} not in these shards; they have: {', '.join(first.fields)}")
        self.fields: tuple[str, ...] = chosen
        self.shards: list[ShardInfo] = infos
        self.max_open = max(1, int(max_open))
        self._offsets = np.cumsum([0] + [i.n for i in infos])
        self._files: OrderedDict[int, h5py.File] = OrderedDict()
        self._pid = -1

    # -- facts -------------------------------------------------------------------------------

    @property
    def config_hash(self) -> str:
        """The set's hash."""
        return self.shards[0].config_hash

    @property
    def attrs(self) -> dict[str, Any]:
        """The first shard's attributes (attack, model, split, seed agree across the set)."""
        return self.shards[0].attrs

    @property
    def attack_config(self) -> dict[str, Any]:
        """The attack's config as the shards record it (``to_dict`` of it, e.g. of a
        :class:`medhpc.attacks.AttackConfig`: ``from_dict(AttackConfig, reader.attack_config)``
        rebuilds it); the first shard's, which the set agrees on (``attack_hash``)."""
        return self.shards[0].attrs["attack_config"]

    @property
    def attack_name(self) -> str:
        """The attack's short label (the ``attack_name`` attribute)."""
        return self.shards[0].attrs["attack_name"]

    @property
    def index(self) -> np.ndarray:
        """Split index of every image, in reader order (from the shards' slices; no read)."""
        if not self.shards:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(i.start, i.stop, dtype=np.int64) for i in self.shards])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def shard_of(self, position: int) -> ShardInfo:
        """The shard holding the ``position``-th image of the reader."""
        return self.shards[self._locate(position)[0]]

    # -- files -------------------------------------------------------------------------------

    def _file(self, k: int) -> h5py.File:
        # Handles inherited through fork are not safe to use: each process opens its own.
        if self._pid != os.getpid():
            self._files = OrderedDict()
            self._pid = os.getpid()
        h5 = self._files.get(k)
        if h5 is None:
            while len(self._files) >= self.max_open:
                _, old = self._files.popitem(last=False)
                old.close()
            h5 = open_shard(self.shards[k].path)
            self._files[k] = h5
        else:
            self._files.move_to_end(k)
        return h5

    def close(self) -> None:
        """Close this process's open files (they reopen on the next read)."""
        if self._pid == os.getpid():
            for h5 in self._files.values():
                h5.close()
        self._files = OrderedDict()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = OrderedDict(), -1
        return state

    # -- reading -----------------------------------------------------------------------------

    def _locate(self, position: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= position < n:
            raise IndexError(f"image {position} out of range for a reader of {n} images")
        position %= n
        k = int(np.searchsorted(self._offsets, position, side="right")) - 1
        return k, position - int(self._offsets[k])

    def _read_rows(self, k: int, lo: int, hi: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        h5 = self._file(k)
        out: dict[str, np.ndarray] = {}
        for name in names:
            ds = h5[name]
            if name == "ids":
                out[name] = ds.asstr()[lo:hi]
            elif FIELDS[name].image_axis == 1:
                out[name] = ds[:, lo:hi]
            else:
                out[name] = ds[lo:hi]
        return out

    def _check_fields(self, fields: Sequence[str] | None) -> tuple[str, ...]:
        names = tuple(fields) if fields is not None else self.fields
        have = self.shards[0].fields
        for name in names:
            if name not in have:
                raise ShardError(f"field {name!r} not in these shards; they have: {', '.join(have)}")
        return names

    def read_range(self, start: int, stop: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Fields of reader positions ``[start, stop)``, concatenated across shards."""
        names = self._check_fields(fields)
        start, stop = max(0, start), min(len(self), stop)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        k = int(np.searchsorted(self._offsets, start, side="right")) - 1 if start < stop else len(self.shards)
        while start < stop and k < len(self.shards):
            base = int(self._offsets[k])
            hi = min(stop, int(self._offsets[k + 1]))
            for name, arr in self._read_rows(k, start - base, hi - base, names).items():
                parts[name].append(arr)
            start, k = hi, k + 1
        out = {}
        for name in names:
            axis = FIELDS[name].image_axis
            out[name] = np.concatenate(parts[name], axis=axis) if parts[name] else self._empty(name)
        return out

    def _empty(self, name: str) -> np.ndarray:
        info = self.shards[0]
        f = FIELDS[name]
        if name == "ids":
            return np.zeros(0, dtype=object)
        if name == "x_adv":
            return np.zeros((0, *info.image_shape), dtype=info.image_dtype)
        sizes = {"N": 0, "C": info.classes, "S": info.samples}
        return np.zeros(tuple(sizes[a] for a in f.axes), dtype=f.dtype)

    def read(self, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Whole fields of the set, concatenated in index order (per-draw fields along axis 1).

        ``ids`` come back as an object array of str. Reads everything asked for into memory;
        use :meth:`iter_batches` for the images of a large set.
        """
        return self.read_range(0, len(self), fields)

    def iter_batches(
        self, batch_size: int = 256, fields: Sequence[str] | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive batches of ``batch_size`` images (the last may be smaller), in index order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        names = self._check_fields(fields)
        for lo in range(0, len(self), batch_size):
            yield self.read_range(lo, lo + batch_size, names)

    def __getitem__(self, position: int) -> dict[str, Any]:
        k, row = self._locate(int(position))
        data = self._read_rows(k, row, row + 1, self.fields)
        out: dict[str, Any] = {}
        for name, arr in data.items():
            out[name] = arr[:, 0] if FIELDS[name].image_axis == 1 else arr[0]
        if "ids" in out:
            out["ids"] = str(out["ids"])
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every image in index order, one dict each (read a batch at a time underneath)."""
        for batch in self.iter_batches(256, self.fields):
            n = batch[self.fields[0]].shape[FIELDS[self.fields[0]].image_axis]
            for i in range(n):
                item = {name: (arr[:, i] if FIELDS[name].image_axis == 1 else arr[i]) for name, arr in batch.items()}
                if "ids" in item:
                    item["ids"] = str(item["ids"])
                yield item


__all__ = ["ShardInfo", "ShardReader", "find_gaps", "info_from_file", "open_shard", "read_info"]
