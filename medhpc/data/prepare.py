"""Decode a dataset once into an HDF5 cache that training reads without decoding.

Decoding and resizing a 3-megapixel fundus PNG costs tens of milliseconds;
reading a 224x224 uint8 array from the cache costs well under one. ``prepare``
pays the decoding once, in a process pool, and writes:

* ``CACHE.h5``: per split group (``train``, ``val``, ``test``) the datasets
  ``images`` uint8 (N, S, S, 3) chunked one image per chunk, ``labels`` int64,
  ``ids`` UTF-8 strings and, when the dataset has lesion masks, ``masks`` uint8
  (N, S, S) with ``has_mask`` bool (N,); a ``skipped`` group lists images left
  out by ``skip_bad``; file attributes record kind, size, seed, fractions,
  classes, source root, medhpc version and the manifest's SHA-256.
* ``CACHE.manifest.json`` beside it: the split (see :mod:`medhpc.data.split`).

Both are written under temporary names and renamed into place only when
complete, so a failed or interrupted run never leaves a partial cache and never
touches an existing one.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

import medhpc
from medhpc.data.decode import load_sample
from medhpc.data.errors import BadImageError, DataError
from medhpc.data.readers import class_names, read_dataset
from medhpc.data.records import Record
from medhpc.data.split import (
    DEFAULT_FRACTIONS,
    SPLITS,
    SkippedEntry,
    build_manifest,
    save_manifest,
    split_records,
    validate_fractions,
)

log = logging.getLogger(__name__)

COMPRESSIONS = ("lzf", "gzip", "none")
#: Images decoded per task sent to a worker: amortises inter-process overhead.
_TASK_IMAGES = 16


@dataclass(frozen=True)
class PrepareResult:
    """Where ``prepare`` wrote, how many images each split got and what it skipped."""

    cache: Path
    manifest: Path
    counts: dict[str, int]
    skipped: list[SkippedEntry]


def manifest_path_for(cache: Path | str) -> Path:
    """``x/cache.h5`` -> ``x/cache.manifest.json``: the manifest lives beside its cache."""
    cache = Path(cache)
    return cache.with_name(f"{cache.stem if cache.suffix else cache.name}.manifest.json")


# One decoded image: (image, mask or None, error reason or None, failing path or None).
_Decoded = tuple[np.ndarray | None, np.ndarray | None, str | None, str | None]


def _decode_many(jobs: Sequence[tuple[str, str | None]], size: int) -> list[_Decoded]:
    """Decode a few images; errors are returned, not raised, to keep their order."""
    out: list[_Decoded] = []
    for path, mask in jobs:
        try:
            image, mask_arr = load_sample(path, mask, size)
            out.append((image, mask_arr, None, None))
        except BadImageError as exc:
            out.append((None, None, exc.reason, str(exc.path)))
    return out


def _decode_all(
    records: Sequence[Record], size: int, pool: ProcessPoolExecutor | None, workers: int
) -> Generator[_Decoded, None, None]:
    """Decode ``records`` in order, in ``pool`` if given, else in this process.

    At most a few tasks per worker are in flight, so memory stays bounded even
    when writing (compression) is slower than decoding.
    """
    jobs = [(str(r.path), str(r.mask_path) if r.mask_path else None) for r in records]
    tasks = [jobs[i : i + _TASK_IMAGES] for i in range(0, len(jobs), _TASK_IMAGES)]
    if pool is None:
        for task in tasks:
            yield from _decode_many(task, size)
        return
    pending: deque[Future[list[_Decoded]]] = deque()
    todo = iter(tasks)
    for task in todo:
        pending.append(pool.submit(_decode_many, task, size))
        if len(pending) >= 3 * workers:
            break
    while pending:
        done = pending.popleft().result()
        nxt = next(todo, None)
        if nxt is not None:
            pending.append(pool.submit(_decode_many, nxt, size))
        yield from done


def _start_pool(workers: int) -> ProcessPoolExecutor | None:
    """Start decoding processes now, before any HDF5 file is open in this process.

    With the ``fork`` start method, a child forked while the cache is open for
    writing would inherit HDF5's state for it; starting them first avoids that.
    """
    if workers <= 1:
        return None
    pool = ProcessPoolExecutor(max_workers=workers)
    for fut in [pool.submit(int) for _ in range(workers)]:
        fut.result()
    return pool


def _create_split(group: h5py.Group, n: int, size: int, with_masks: bool, compression: str | None) -> None:
    opts = {"compression": compression} if compression else {}
    group.create_dataset(
        "images", shape=(n, size, size, 3), maxshape=(None, size, size, 3), dtype=np.uint8,
        chunks=(1, size, size, 3), **opts,
    )
    group.create_dataset("labels", shape=(n,), maxshape=(None,), dtype=np.int64)
    group.create_dataset("ids", shape=(n,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"))
    if with_masks:
        group.create_dataset(
            "masks", shape=(n, size, size), maxshape=(None, size, size), dtype=np.uint8,
            chunks=(1, size, size), **opts,
        )
        group.create_dataset("has_mask", shape=(n,), maxshape=(None,), dtype=bool)


def _string_dataset(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    group.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype("utf-8"))


def prepare(
    kind: str,
    root: Path | str,
    out: Path | str,
    size: int = 224,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    workers: int | None = None,
    skip_bad: bool = False,
    compression: str = "lzf",
    progress: bool = True,
    ignore_unknown: bool = False,
) -> PrepareResult:
    """Read, split, decode and cache a dataset; see the module docstring.

    Parameters
    ----------
    workers
        Decoding processes; ``None`` uses every core, ``0`` or ``1`` decodes in
        this process.
    skip_bad
        Leave out images that fail to decode instead of stopping at the first.
        They are logged, and listed in the cache and the manifest.
    compression
        ``lzf`` (fast, default), ``gzip`` (smaller, slower to read) or ``none``.
    ignore_unknown
        Leave out, and log with their count, the folders and files that the reader
        does not know (a ``COVID/`` class in a Kermany split, a ``README.txt`` among
        the images) instead of stopping; see :mod:`medhpc.data.readers`.
    """
    if compression not in COMPRESSIONS:
        raise DataError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    if size < 1:
        raise DataError(f"image size must be positive, got {size}")
    fractions = validate_fractions(fractions)
    workers = (os.cpu_count() or 1) if workers is None else workers
    root = Path(root)
    out = Path(out)
    if out.exists() and out.is_dir():
        raise DataError(f"output path is a folder, expected a file name: {out}")

    records = read_dataset(kind, root, ignore_unknown=ignore_unknown)
    classes = class_names(kind, root)
    splits = split_records(records, seed=seed, fractions=fractions)
    ordered = [rec for name in SPLITS for rec in splits[name]]
    with_masks = any(rec.mask_path is not None for rec in ordered)

    out.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp_cache = out.with_name(f".{out.name}.tmp-{token}")
    manifest_path = manifest_path_for(out)
    tmp_manifest = manifest_path.with_name(f".{manifest_path.name}.tmp-{token}")
    # No more processes than there are tasks to give them.
    workers = min(workers, -(-len(ordered) // _TASK_IMAGES))
    pool = _start_pool(workers)
    try:
        kept: dict[str, list[Record]] = {name: [] for name in SPLITS}
        skipped: list[SkippedEntry] = []
        with h5py.File(tmp_cache, "w") as h5:
            for name in SPLITS:
                _create_split(h5.create_group(name), len(splits[name]), size, with_masks,
                              None if compression == "none" else compression)
            bar = tqdm(total=len(ordered), desc=f"prepare {kind}", unit="img",
                       disable=None if progress else True)
            decoded = _decode_all(ordered, size, pool, workers)
            try:
                for name in SPLITS:
                    group = h5[name]
                    for rec in splits[name]:
                        image, mask, reason, bad_path = next(decoded)
                        bar.update()
                        if image is None:
                            assert reason is not None and bad_path is not None
                            if not skip_bad:
                                raise BadImageError(bad_path, reason)
                            skipped.append(SkippedEntry(id=rec.id, path=bad_path, reason=reason))
                            continue
                        i = len(kept[name])
                        group["images"][i] = image
                        group["labels"][i] = rec.label
                        group["ids"][i] = rec.id
                        if with_masks:
                            group["has_mask"][i] = mask is not None
                            if mask is not None:
                                group["masks"][i] = mask
                        kept[name].append(rec)
            finally:
                bar.close()
                decoded.close()
            for name in SPLITS:
                n = len(kept[name])
                for ds in h5[name].values():
                    if ds.shape[0] != n:
                        ds.resize(n, axis=0)
            skip_group = h5.create_group("skipped")
            skip_group.attrs["count"] = len(skipped)
            _string_dataset(skip_group, "ids", [s.id for s in skipped])
            _string_dataset(skip_group, "paths", [s.path for s in skipped])
            _string_dataset(skip_group, "reasons", [s.reason for s in skipped])

            manifest = build_manifest(kind, root, kept, seed, fractions, classes, skipped)
            h5.attrs["kind"] = kind
            h5.attrs["size"] = size
            h5.attrs["seed"] = seed
            h5.attrs["fractions"] = np.array(fractions, dtype=np.float64)
            h5.attrs["classes"] = np.array(classes, dtype=h5py.string_dtype("utf-8"))
            h5.attrs["root"] = manifest.root
            h5.attrs["medhpc_version"] = medhpc.__version__
            h5.attrs["manifest_sha256"] = manifest.sha256()
            h5.attrs["n_skipped"] = len(skipped)
        save_manifest(manifest, tmp_manifest)
        os.replace(tmp_cache, out)
        os.replace(tmp_manifest, manifest_path)
    except BaseException:
        tmp_cache.unlink(missing_ok=True)
        tmp_manifest.unlink(missing_ok=True)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    counts = {name: len(kept[name]) for name in SPLITS}
    if skipped:
        log.warning(
            "skipped %d bad image(s):\n%s",
            len(skipped),
            "\n".join(f"  {s.path}: {s.reason}" for s in skipped),
        )
    log.info("wrote %s (%s) and %s", out, ", ".join(f"{k} {v}" for k, v in counts.items()), manifest_path)
    return PrepareResult(cache=out, manifest=manifest_path, counts=counts, skipped=skipped)
