"""HDF5 shards of attack results: the schema, an atomic checksummed writer, a lazy reader, verify.

* :mod:`medhpc.store.schema` — the documented layout (datasets, dtypes, attributes), the
  contract for readers outside medhpc;
* :func:`write_shard` / :class:`ShardWriter` — write through a temporary file, rename into
  place when complete, then record the SHA-256 in ``NAME.h5.sha256``;
* :func:`attack_to_shard` — run an attack over batches and write its shard;
* :class:`ShardReader` — a lazy, DataLoader-safe view of a set of shards in index order;
* :func:`verify_dir` (``python -m medhpc verify DIR``) — truncated, altered, missing and
  unverified shards, and leftover temporaries.

Importing this package does not import torch (``verify`` starts in a fraction of a second);
:func:`attack_to_shard`, :func:`cache_batches` and :func:`default_samples` load it on use.
"""

from typing import Any

from medhpc.store.reader import ShardInfo, ShardReader, find_gaps, open_shard, read_info
from medhpc.store.schema import FIELDS, FORMAT, SCHEMA_VERSION, shard_filename
from medhpc.store.verify import Problem, VerifyReport, verify_dir, verify_shard
from medhpc.store.writer import (
    ShardError,
    ShardMeta,
    ShardWriter,
    read_sidecar,
    sha256_file,
    sidecar_path,
    write_shard,
)

__all__ = [
    "FIELDS",
    "FORMAT",
    "SCHEMA_VERSION",
    "Problem",
    "ShardError",
    "ShardInfo",
    "ShardMeta",
    "ShardReader",
    "ShardWriter",
    "VerifyReport",
    "attack_to_shard",
    "cache_batches",
    "default_samples",
    "find_gaps",
    "open_shard",
    "read_info",
    "read_sidecar",
    "sha256_file",
    "shard_filename",
    "sidecar_path",
    "verify_dir",
    "verify_shard",
    "write_shard",
]

_LAZY = {name: "medhpc.store.produce" for name in ("attack_to_shard", "cache_batches", "default_samples")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medhpc.store' has no attribute {name!r}")
