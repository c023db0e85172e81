"""Write shards so that a file under a shard's name is always complete, and say so with a checksum.

The order of a write is what makes a crash (exception, SIGKILL, power loss) harmless:

1. stale temporaries of the same shard (from an earlier killed write) are removed;
2. the shard is written to ``.NAME.h5.<random>.tmp`` beside its final name, closed, and its
   SHA-256 computed;
3. the old sidecar (if any) is removed, the temporary is fsynced and renamed over ``NAME.h5``;
4. the sidecar ``NAME.h5.sha256`` is written (itself atomically).

A crash before 3 leaves the old shard and its sidecar untouched (plus a temporary that
``verify`` reports and the next write removes); a crash between 3 and 4 leaves a complete
shard without a sidecar, which readers and ``verify`` treat as unverified. No step leaves a
partial file, or a new shard paired with an old checksum, under a final name.

One shard path has one writer at a time (a sweep names shards by their config hash and slice).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from medhpc import __version__
from medhpc.config import config_hash, to_dict
from medhpc.store.integrity import (
    ShardError,
    _readable,
    created_time,
    remove_stale_temporaries,
    sha256_file,
    sidecar_path,
    write_sidecar,
)
from medhpc.store.reader import ShardInfo, read_info
from medhpc.store.schema import (
    ATTACK_FIELDS,
    FIELDS,
    FORMAT,
    IMAGE_DTYPES,
    LABEL_FIELDS,
    REQUIRED,
    SAMPLE_FIELDS,
    SCHEMA_VERSION,
    SPLITS,
)

log = logging.getLogger(__name__)

#: Target size of one uncompressed image chunk: small enough for HDF5's default 1 MiB chunk
#: cache, so reading images one by one does not decompress a chunk once per image.
CHUNK_BYTES = 256 * 1024
_ROWS_1D = 4096
_ROWS_SAMPLES = 1024


@dataclasses.dataclass(frozen=True)
class ShardMeta:
    """What a shard records about how it was made (its attributes; see :mod:`.schema`).

    Parameters
    ----------
    attack : the attack's config, a dataclass instance with a ``name`` (e.g.
        :class:`medhpc.attacks.AttackConfig`, which validates itself): the shard records its
        ``to_dict``, ``config_hash`` and ``name``.
    split : ``train``, ``val`` or ``test``.
    start : split index of the shard's first image; the shard holds ``[start, start + N)``.
    model_hash : names the trained model; give the training run's config hash, which (unlike
        the model config) also tells two trainings of one architecture apart. Defaults to the
        hash of ``model_config``; one of the two is required, so that every shard says which
        model it attacked.
    model_config : the model's config (a dataclass or a mapping), stored as JSON.
    run : the training run folder or checkpoint the model came from.
    dataset : the prepared cache the images came from.
    set_size : the set of shards this one belongs to tiles ``[0, set_size)``; lets ``verify``
        notice a missing last shard. None when unknown.
    seed : the attack seed (see the ``seed`` attribute for how batches derive theirs).
    samples : S, the per-draw probabilities stored per image (0 for a deterministic model).
    config_hash : names the set; defaults to a hash of attack, model, dataset, split, seed,
        samples and image precision. A sweep passes its attack job's hash.
    meta : JSON-serialisable extras the caller wants kept with the shard.
    """

    attack: Any
    split: str
    start: int
    model_hash: str | None = None
    model_config: Any = None
    run: str = ""
    dataset: str = ""
    set_size: int | None = None
    seed: int = 0
    samples: int = 0
    config_hash: str | None = None
    meta: Mapping[str, Any] | None = None


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ShardError(f"meta.{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _is_config(value: Any) -> bool:
    """A config dataclass instance (not a class, not a mapping)."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _resolve_meta(meta: ShardMeta, image_dtype: str) -> dict[str, Any]:
    """Validate ``meta`` and return the shard's attributes except ``stop``/``classes``/``created``."""
    if not isinstance(meta, ShardMeta):
        raise ShardError(f"meta must be a ShardMeta, got {type(meta).__name__}")
    attack = meta.attack
    if not _is_config(attack) or not isinstance(getattr(attack, "name", None), str):
        raise ShardError(
            f"meta.attack must be an attack config (e.g. medhpc.attacks.AttackConfig), got {type(attack).__name__}"
        )
    if meta.split not in SPLITS:
        raise ShardError(f"meta.split must be one of {', '.join(SPLITS)}, got {meta.split!r}")
    start = _int("start", meta.start, 0)
    seed = _int("seed", meta.seed, 0)
    samples = _int("samples", meta.samples, 0)
    set_size = -1 if meta.set_size is None else _int("set_size", meta.set_size, 1)
    if meta.model_config is None:
        model_config: Any = None
    elif dataclasses.is_dataclass(meta.model_config) and not isinstance(meta.model_config, type):
        model_config = to_dict(meta.model_config)
    elif isinstance(meta.model_config, Mapping):
        model_config = dict(meta.model_config)
    else:
        raise ShardError(
            f"meta.model_config must be a config dataclass or a mapping, got {type(meta.model_config).__name__}"
        )
    model_hash = meta.model_hash
    if model_hash is None:
        if model_config is None:
            raise ShardError("meta: give model_hash (the training run's config hash) or model_config")
        model_hash = config_hash(meta.model_config if dataclasses.is_dataclass(meta.model_config) else model_config)
    if not isinstance(model_hash, str) or not model_hash:
        raise ShardError(f"meta.model_hash must be a non-empty string, got {model_hash!r}")
    attack_hash = config_hash(attack)
    set_hash = meta.config_hash
    if set_hash is None:
        set_hash = config_hash(
            {
                "attack": attack_hash, "model": model_hash, "dataset": str(meta.dataset), "split": meta.split,
                "seed": seed, "samples": samples, "image_dtype": image_dtype,
            }
        )  # fmt: skip
    if not isinstance(set_hash, str) or not re.fullmatch(r"[0-9a-f]+", set_hash):
        raise ShardError(f"meta.config_hash must be a lowercase hex string, got {set_hash!r}")
    try:
        extras = json.dumps(dict(meta.meta or {}), sort_keys=True)
        model_json = json.dumps(model_config, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ShardError(f"meta.meta and meta.model_config must be JSON-serialisable: {exc}") from None
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "medhpc_version": __version__,
        "config_hash": set_hash,
        "attack_config": json.dumps(to_dict(attack), sort_keys=True),
        "attack_hash": attack_hash,
        "attack_name": attack.name,
        "model_config": model_json,
        "model_hash": model_hash,
        "run": str(meta.run),
        "dataset": str(meta.dataset),
        "split": meta.split,
        "start": start,
        "set_size": set_size,
        "seed": seed,
        "samples": samples,
        "image_dtype": image_dtype,
        "meta": extras,
    }


def _as_numpy(name: str, value: Any) -> np.ndarray:
    """A field's values as a numpy array (tensors are detached and copied to the host)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if name == "ids":
        if isinstance(value, str):
            raise ShardError("field 'ids' must be a sequence of strings, got one string")
        values = list(value)
        bad = [v for v in values if not isinstance(v, str)]
        if bad:
            raise ShardError(f"field 'ids' must hold strings, got {type(bad[0]).__name__} {bad[0]!r}")
        return np.array(values, dtype=object)
    return np.asarray(value)


def _check_kind(name: str, arr: np.ndarray) -> None:
    kind = FIELDS[name].kind
    ok = {
        "float": np.issubdtype(arr.dtype, np.floating),
        "int": np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_,
        "bool": arr.dtype == np.bool_,
        "str": True,
    }[kind]
    if not ok:
        want = {"float": "floating-point", "int": "integer", "bool": "boolean", "str": "string"}[kind]
        raise ShardError(f"field {name!r} must hold {want} values, got dtype {arr.dtype}")


class ShardWriter(AbstractContextManager["ShardWriter"]):
    """Write one shard batch by batch; it appears under its name only when the block ends cleanly.

    >>> with ShardWriter(path, meta) as w:          # doctest: +SKIP
    ...     for arrays in batches:
    ...         w.append(arrays)
    >>> w.info.sha256                               # doctest: +SKIP

    Batches are appended in index order: each batch's ``index`` must continue the shard's
    contiguous slice. An exception inside the block (or in ``append``) removes the temporary
    and leaves any earlier shard under that name, with its sidecar, untouched.

    Parameters
    ----------
    path : the shard's final name; must end in ``.h5`` and its folder must exist (a typo in an
        output folder should fail, not create a tree elsewhere).
    meta : what the shard records about its making (:class:`ShardMeta`).
    image_dtype : ``float32`` (exact, the default) or ``float16`` (half the size, rounds
        pixels by up to 2.4e-4; see :mod:`medhpc.store.schema`).
    compression : gzip level 0-9; 0 leaves gzip out (chunks, shuffle and fletcher32 stay). Level
        1, the default, shrinks float32 adversarial images as much as level 4 (to about two
        thirds) and writes faster; deflate, not the disk, limits writing (about 50 MB/s on one
        core, ~290 MB/s without gzip: benchmarks/results/store-cpu.md).
    """

    def __init__(
        self,
        path: Path | str,
        meta: ShardMeta,
        *,
        image_dtype: str = "float32",
        compression: int = 1,
    ) -> None:
        path = Path(path)
        if path.suffix != ".h5":
            raise ShardError(f"{path}: a shard's name must end in .h5 (verify and readers look for *.h5)")
        if not path.parent.is_dir():
            raise ShardError(f"{path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise ShardError(f"{path} is a folder, expected a file name")
        if image_dtype not in IMAGE_DTYPES:
            raise ShardError(f"image_dtype must be one of {', '.join(IMAGE_DTYPES)}, got {image_dtype!r}")
        if isinstance(compression, bool) or not isinstance(compression, int) or not 0 <= compression <= 9:
            raise ShardError(f"compression must be a gzip level 0-9, got {compression!r}")
        self.path = path
        self.image_dtype = image_dtype
        self.compression = compression
        self.attrs = _resolve_meta(meta, image_dtype)
        self.start: int = self.attrs["start"]
        self.samples: int = self.attrs["samples"]
        self.n = 0
        self.info: ShardInfo | None = None  # set once the shard is in place
        self._ids: list[str] = []
        self._classes: int | None = None
        self._image_shape: tuple[int, ...] | None = None
        self._attack_fields: frozenset[str] | None = None
        self._h5: h5py.File | None = None
        self._atomic: Any = None

    # -- the context -------------------------------------------------------------------------

    def __enter__(self) -> ShardWriter:
        if self._atomic is not None or self.info is not None:
            raise ShardError(f"{self.path}: a ShardWriter writes one shard, once")
        from medhpc.atomic import atomic_path  # imports torch: keep verify free of it

        remove_stale_temporaries(self.path)
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._h5 = h5py.File(tmp, "w")
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._atomic is None:
            return
        if exc_type is not None:
            self._abort(exc_type, exc, tb)
            return
        try:
            digest = self._finish()
        except BaseException:
            self._abort()
            raise
        atomic, self._atomic = self._atomic, None
        atomic.__exit__(None, None, None)  # fsync and rename into place
        write_sidecar(self.path, digest)
        self.info = read_info(self.path)
        log.info("wrote %s (%d images, sha256 %s)", self.path, self.n, digest[:12])

    def _abort(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        """Close and delete the temporary; the final name keeps whatever it held before."""
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:
                log.debug("closing %s after an error failed", self.path, exc_info=True)
            self._h5 = None
        atomic, self._atomic = self._atomic, None
        if atomic is not None:
            err = exc if exc is not None else RuntimeError("shard write aborted")
            try:
                atomic.__exit__(type(err), err, tb)  # removes the temporary; re-raises err
            except BaseException as raised:
                if raised is not err:
                    raise
        log.warning("write of %s abandoned; whatever that name held before is unchanged", self.path)

    # -- appending ---------------------------------------------------------------------------

    def append(self, arrays: Mapping[str, Any]) -> None:
        """Append one batch: a mapping from field names (see :mod:`.schema`) to arrays or tensors.

        Every required field must be there, all with the same number of images; ``const``
        in every batch or in none; the per-draw fields exactly when ``meta.samples`` > 0.
        """
        if self._h5 is None:
            raise ShardError(f"{self.path}: append inside 'with ShardWriter(...) as w:'")
        try:
            data = self._validate(arrays)
        except BaseException:
            self._abort()
            raise
        if self.n == 0:
            self._create(data)
        n = len(data["ids"])
        for name, arr in data.items():
            if name == "ids":
                continue
            ds = self._h5[name]
            axis = FIELDS[name].image_axis
            ds.resize(self.n + n, axis=axis)
            where = [slice(None)] * arr.ndim
            where[axis] = slice(self.n, self.n + n)
            ds[tuple(where)] = arr
        self._ids.extend(data["ids"].tolist())
        self.n += n

    def _validate(self, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(arrays, Mapping):
            raise ShardError(f"append takes a mapping of field name -> array, got {type(arrays).__name__}")
        unknown = sorted(set(arrays) - set(FIELDS))
        if unknown:
            raise ShardError(f"{self.path}: unknown field {unknown[0]!r}; fields: {', '.join(FIELDS)}")
        missing = [name for name in REQUIRED if name not in arrays]
        if missing:
            raise ShardError(f"{self.path}: missing field {missing[0]!r}")
        given_samples = [name for name in SAMPLE_FIELDS if name in arrays]
        if self.samples and len(given_samples) != len(SAMPLE_FIELDS):
            need = next(name for name in SAMPLE_FIELDS if name not in arrays)
            raise ShardError(f"{self.path}: missing field {need!r} (meta.samples = {self.samples})")
        if not self.samples and given_samples:
            raise ShardError(
                f"{self.path}: field {given_samples[0]!r} given but meta.samples is 0 (a deterministic model)"
            )
        given = frozenset(name for name in ATTACK_FIELDS if arrays.get(name) is not None)
        if self._attack_fields is not None and given != self._attack_fields:
            odd = sorted(given ^ self._attack_fields)[0]
            raise ShardError(f"{self.path}: field {odd!r} must be given in every batch or in none")
        data = {name: _as_numpy(name, value) for name, value in arrays.items() if value is not None}
        for name, arr in data.items():
            _check_kind(name, arr)

        x = data["x_adv"]
        if x.ndim < 2 or x.shape[0] == 0:
            raise ShardError(f"field 'x_adv' must be a non-empty batch of images (N, ...), got shape {x.shape}")
        n = x.shape[0]
        if self._image_shape is not None and x.shape[1:] != self._image_shape:
            raise ShardError(f"field 'x_adv' has images of shape {x.shape[1:]}, earlier batches {self._image_shape}")
        if not np.isfinite(x).all():
            raise ShardError("field 'x_adv' holds NaN or infinite values")
        if self.image_dtype == "float16" and np.abs(x).max() > np.finfo(np.float16).max:
            raise ShardError("field 'x_adv' holds values beyond float16's range; use image_dtype='float32'")
        classes = self._classes
        for name, arr in data.items():
            f = FIELDS[name]
            if name == "x_adv":
                continue
            if len(f.axes) != arr.ndim:
                raise ShardError(
                    f"field {name!r} must have shape ({', '.join(f.axes)}) with N = {n}, got shape {arr.shape}"
                )
            if arr.shape[f.image_axis] != n:
                raise ShardError(
                    f"field {name!r} has {arr.shape[f.image_axis]} images (shape {arr.shape}), but x_adv has {n}"
                )
            if "C" in f.axes:
                c = arr.shape[f.axes.index("C")]
                if classes is None:
                    classes = c
                if c != classes or c < 2:
                    raise ShardError(f"field {name!r} has {c} classes (shape {arr.shape}), expected {classes}")
            if "S" in f.axes and arr.shape[0] != self.samples:
                raise ShardError(
                    f"field {name!r} has {arr.shape[0]} draws (shape {arr.shape}), meta.samples is {self.samples}"
                )
        assert classes is not None  # clean_probs is required
        expected = np.arange(self.start + self.n, self.start + self.n + n)
        if not np.array_equal(data["index"], expected):
            raise ShardError(
                f"field 'index' must continue the shard's contiguous slice: expected {expected[0]}..{expected[-1]}, "
                f"got {_preview(data['index'])}"
            )
        for name in LABEL_FIELDS:
            arr = data[name]
            if arr.size and (arr.min() < 0 or arr.max() >= classes):
                bad = arr[(arr < 0) | (arr >= classes)][0]
                raise ShardError(f"field {name!r} holds class {bad}, outside [0, {classes})")
        self._classes = classes
        self._image_shape = tuple(x.shape[1:])
        self._attack_fields = given
        return data

    def _create(self, data: Mapping[str, np.ndarray]) -> None:
        """Create the datasets from the first batch's shapes (resizable along the image axis)."""
        assert self._h5 is not None
        filters: dict[str, Any] = {
            "compression": "gzip" if self.compression else None,
            "compression_opts": self.compression if self.compression else None,
            "shuffle": True,
            "fletcher32": True,
        }
        for name, arr in data.items():
            if name == "ids":
                continue
            f = FIELDS[name]
            if name == "x_adv":
                dtype = np.dtype(self.image_dtype)
                per_image = int(np.prod(arr.shape[1:])) * dtype.itemsize
                rows = max(1, CHUNK_BYTES // per_image)
                chunks: tuple[int, ...] = (rows, *arr.shape[1:])
            else:
                dtype = np.dtype(f.dtype)
                if f.axes[0] == "S":
                    chunks = (arr.shape[0], _ROWS_SAMPLES, arr.shape[2])
                else:
                    chunks = (_ROWS_1D, *arr.shape[1:])
            shape = list(arr.shape)
            shape[f.image_axis] = 0
            maxshape: list[int | None] = list(arr.shape)
            maxshape[f.image_axis] = None
            self._h5.create_dataset(
                name, shape=tuple(shape), maxshape=tuple(maxshape), dtype=dtype, chunks=chunks, **filters
            )

    def _finish(self) -> str:
        """Write ids and attributes, close the temporary and return its SHA-256."""
        assert self._h5 is not None
        if self.n == 0:
            raise ShardError(f"{self.path}: no images were appended")
        encoded = [s.encode("utf-8") for s in self._ids]
        width = max(1, max(len(b) for b in encoded))
        self._h5.create_dataset(
            "ids", data=np.array(encoded, dtype=h5py.string_dtype("utf-8", width)),
            chunks=(min(_ROWS_1D, self.n),), compression="gzip" if self.compression else None,
            compression_opts=self.compression if self.compression else None, shuffle=True, fletcher32=True,
        )  # fmt: skip
        attrs = dict(self.attrs)
        attrs["stop"] = self.start + self.n
        attrs["classes"] = int(self._classes or 0)
        attrs["created"] = created_time()
        if attrs["set_size"] != -1 and attrs["stop"] > attrs["set_size"]:
            raise ShardError(
                f"{self.path}: images [{self.start}, {attrs['stop']}) run past meta.set_size = {attrs['set_size']}"
            )
        self._write_attrs(attrs)
        tmp = self._h5.filename
        self._h5.close()
        self._h5 = None
        _readable(Path(tmp))
        digest = sha256_file(tmp)
        # A new shard must never sit beside the old one's checksum: drop it before the rename.
        sidecar_path(self.path).unlink(missing_ok=True)
        return digest

    def _write_attrs(self, attrs: Mapping[str, Any]) -> None:
        assert self._h5 is not None
        for key, value in attrs.items():
            self._h5.attrs[key] = np.int64(value) if isinstance(value, int) else value


def _preview(arr: np.ndarray, k: int = 6) -> str:
    items = ", ".join(str(v) for v in arr[:k].tolist())
    return f"[{items}{', ...' if arr.size > k else ''}]"


def write_shard(
    path: Path | str,
    arrays: Mapping[str, Any],
    meta: ShardMeta,
    *,
    image_dtype: str = "float32",
    compression: int = 1,
) -> ShardInfo:
    """Write a whole shard from one mapping of fields (see :mod:`.schema`) and return its
    :class:`~medhpc.store.reader.ShardInfo`.

    The write is atomic and checksummed (see this module's docstring); for shards too large
    to hold in memory at once, use :class:`ShardWriter` and append batch by batch.
    """
    with ShardWriter(path, meta, image_dtype=image_dtype, compression=compression) as writer:
        writer.append(arrays)
    assert writer.info is not None
    return writer.info


__all__ = ["ShardMeta", "ShardWriter", "write_shard"]
