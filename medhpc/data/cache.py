"""Read a prepared HDF5 cache for training: a Dataset and a batch loader.

Training must never wait on image decoding, so batches come straight from the
uint8 arrays written by :mod:`medhpc.data.prepare`: each batch is read in
sorted (file) order into one buffer and un-permuted, then converted to float
on the device (4x less host-to-device traffic than sending float32).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from medhpc.data.errors import DataError
from medhpc.data.split import SPLITS

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, ...]


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"cache file does not exist: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot open cache {path}: {exc}") from None


class CacheDataset(Dataset[Batch]):
    """One split of a cache: ``ds[i]`` is ``(image uint8 (3,S,S), label int64[, mask uint8 (S,S)])``.

    Images are returned in ``torch.channels_last`` memory layout (a permuted
    view of the stored (S,S,3) pixels, so no transposing copy); convolutions
    accept it directly, and ``.contiguous()`` gives the classic layout.

    ``ds[list_of_indices]`` returns the same fields stacked into a batch, read
    in sorted order (see :meth:`read_batch`). The HDF5 file is opened lazily in
    whichever process first reads, so the dataset can be handed to
    ``DataLoader`` workers (fork or spawn); labels and ids are loaded eagerly
    (they are small) and need no file handle.

    Parameters
    ----------
    path
        A cache written by :func:`medhpc.data.prepare.prepare`.
    split
        ``train``, ``val`` or ``test``.
    with_mask
        Also return lesion masks (0/255); the cache must have them.
    """

    def __init__(self, path: Path | str, split: str = "train", with_mask: bool = False) -> None:
        self.path = Path(path)
        self.split = split
        self.with_mask = with_mask
        with _open(self.path) as h5:
            if "size" not in h5.attrs or "kind" not in h5.attrs:
                raise DataError(f"{self.path} is not a medhpc cache (no kind/size attributes)")
            if split not in h5 or split not in SPLITS:
                raise DataError(
                    f"cache {self.path} has no split {split!r}; splits: {', '.join(s for s in SPLITS if s in h5)}"
                )
            group = h5[split]
            if with_mask and "masks" not in group:
                raise DataError(f"cache {self.path} has no lesion masks (split {split!r})")
            self.labels: np.ndarray = group["labels"][()].astype(np.int64)
            self.ids: list[str] = list(group["ids"].asstr()[()])
            self.attrs: dict[str, Any] = {k: _plain(v) for k, v in h5.attrs.items()}
        self.size = int(self.attrs["size"])
        self._h5: h5py.File | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.labels)

    def _group(self) -> h5py.Group:
        # A handle inherited through fork is not safe to use: reopen per process.
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5[self.split]

    def close(self) -> None:
        """Close this process's file handle (it reopens on the next read)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"], state["_pid"] = None, -1
        return state

    def read_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, ...]:
        """Read images (N,S,S,3), labels (N,) and maybe masks (N,S,S) as numpy, in the given order.

        The indices are sorted and de-duplicated, read in file order, and the
        result is un-permuted (duplicates are allowed in ``indices``).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for split {self.split!r} of {n} images")
        idx = np.where(idx < 0, idx + n, idx)
        rows, inverse = np.unique(idx, return_inverse=True)
        group = self._group()
        in_order = rows.size == idx.size and bool(np.all(rows == idx))

        def read(name: str) -> np.ndarray:
            arr = _read_rows(group[name], rows)
            return arr if in_order else arr[inverse]

        out: tuple[np.ndarray, ...] = (read("images"), self.labels[idx])
        if self.with_mask:
            out += (read("masks"),)
        return out

    def __getitem__(self, index: int | Sequence[int] | np.ndarray) -> Batch:
        single = isinstance(index, (int, np.integer))
        arrays = self.read_batch([int(index)] if single else index)  # type: ignore[arg-type]
        # A view, not a copy: (B,3,S,S) in channels_last memory layout.
        images = torch.from_numpy(arrays[0]).permute(0, 3, 1, 2)
        labels = torch.from_numpy(arrays[1])
        out: tuple[torch.Tensor, ...] = (images, labels)
        if self.with_mask:
            out += (torch.from_numpy(arrays[2]),)
        if single:
            out = tuple(t[0] for t in out)
        return out


class CacheLoader:
    """Batches from one cache split, shuffled reproducibly, optionally in workers.

    Each batch is one sorted read (see :meth:`CacheDataset.read_batch`).
    With ``shuffle``, epoch ``e`` uses the permutation drawn from
    ``numpy.random.default_rng([seed, e])``; the epoch counts up by one at each
    iteration over the loader, or is set with :meth:`set_epoch`.

    Yields ``(images uint8 (B,3,S,S), labels int64 (B,)[, masks uint8 (B,S,S)])``, in
    page-locked memory with ``pin_memory`` (with or without workers), so that copies to the
    GPU with ``non_blocking=True`` overlap compute.

    With ``num_workers > 0`` the workers are forked at the start of each epoch
    and stop at its end (~0.1 s each). ``persistent_workers=True`` keeps them
    for the next epoch; then call :meth:`close` (or use ``with``) when done:
    live workers can stall other process pools forked meanwhile.
    """

    def __init__(
        self,
        path: Path | str,
        split: str = "train",
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
        with_mask: bool = False,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be positive, got {batch_size}")
        self.dataset = CacheDataset(path, split, with_mask=with_mask)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.epoch = 0
        self._batches: list[np.ndarray] = []
        self._loader: DataLoader[Batch] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle order of the next iteration."""
        self.epoch = epoch

    def batch_indices(self, epoch: int | None = None) -> list[np.ndarray]:
        """The index arrays of one epoch's batches (without advancing the epoch)."""
        n = len(self.dataset)
        epoch = self.epoch if epoch is None else epoch
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        return [order[i : i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        self._batches = self.batch_indices()
        self.epoch += 1
        if self.num_workers <= 0:
            # DataLoader pins in its own pin thread; without workers there is none, so pin here.
            pin = self.pin_memory and _can_pin()
            for idx in self._batches:
                batch = self.dataset[idx]
                yield tuple(t.pin_memory() for t in batch) if pin else batch
            return
        if self._loader is None or not self.persistent_workers:
            self.dataset.close()  # never fork with an open HDF5 handle
            # The sampler hands the workers each epoch's batches from this process.
            self._loader = DataLoader(
                self.dataset,
                batch_size=None,
                sampler=_CurrentBatches(self),
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.persistent_workers,
            )
        yield from self._loader

    def close(self) -> None:
        """Stop persistent workers now rather than when the loader is garbage-collected."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
        self.dataset.close()

    def __enter__(self) -> CacheLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _can_pin() -> bool:
    """Page-locked memory needs a CUDA device; without one, pinning is skipped with a warning
    (as ``DataLoader`` does)."""
    if torch.cuda.is_available():
        return True
    log.warning("pin_memory=True but no CUDA device is visible: batches are not pinned")
    return False


class _CurrentBatches:
    """Sampler yielding the index arrays of the loader's current epoch."""

    def __init__(self, loader: CacheLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.loader._batches)

    def __len__(self) -> int:
        return len(self.loader._batches)


def _read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read sorted, unique ``rows`` of ``dataset`` into one array, one slice per contiguous run.

    h5py's list ("fancy") selection would do this in one call, but it was
    measured ~100x slower here (300 ms vs 3 ms for 32 images of 224 px): HDF5
    processes a union of hyperslabs element by element. Contiguous runs (a
    sequential evaluation pass) become a single read.
    """
    out = np.empty((rows.size, *dataset.shape[1:]), dtype=dataset.dtype)
    if rows.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [rows.size]))
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        dataset.read_direct(out, np.s_[int(rows[s]) : int(rows[e - 1]) + 1], np.s_[s:e])
    return out


def to_float(
    images: torch.Tensor, device: torch.device | str | None = None, non_blocking: bool = False
) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], moved to ``device`` first (while still 1 byte/pixel)."""
    if device is not None:
        images = images.to(device, non_blocking=non_blocking)
    return images.to(torch.float32).div_(255.0)


def prepare_batch(
    images: torch.Tensor,
    device: torch.device,
    image_size: int | None,
    channels_last: bool,
) -> torch.Tensor:
    """uint8 (B,3,S,S) -> float [0, 1] on ``device``, resized to ``image_size`` if given.

    The one preprocessing of cached images: training, evaluation, attacks and the maps all
    see the images through it, so a shard holds what the model was evaluated on."""
    x = to_float(images, device, non_blocking=True)
    if image_size is not None and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _plain(value: Any) -> Any:
    """HDF5 attribute -> plain Python (str, int, float, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def cache_info(path: Path | str) -> dict[str, Any]:
    """File attributes, split sizes, the splits with lesion masks and skipped images of a
    cache, as plain Python."""
    with _open(Path(path)) as h5:
        info = {k: _plain(v) for k, v in h5.attrs.items()}
        info["counts"] = {s: int(h5[s]["labels"].shape[0]) for s in SPLITS if s in h5}
        info["masks"] = [s for s in SPLITS if s in h5 and "masks" in h5[s]]
        skipped = h5.get("skipped")
        info["skipped"] = (
            [
                {"id": i, "path": p, "reason": r}
                for i, p, r in zip(
                    skipped["ids"].asstr()[()],
                    skipped["paths"].asstr()[()],
                    skipped["reasons"].asstr()[()],
                    strict=True,
                )
            ]
            if skipped is not None
            else []
        )
    return info
