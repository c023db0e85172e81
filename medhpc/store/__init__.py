"""HDF5 shards of attack results: the schema, an atomic checksummed writer, a lazy reader, verify.

* :mod:`medhpc.store.schema` — the documented layout (datasets, dtypes, attributes), the
  contract for readers outside medhpc;
* :mod:`medhpc.store.integrity` — checksum sidecars, cleanup of interrupted writes, the
  ``created`` time: what the writer, the reader and ``verify`` share;
* :func:`write_shard` / :class:`ShardWriter` — write through a temporary file, rename into
  place when complete, then record the SHA-256 in ``NAME.h5.sha256``;
* :class:`ShardReader` — a lazy, DataLoader-safe view of a set of shards in index order;
* :func:`verify_dir` (``python -m medhpc verify DIR``) — truncated, altered, missing and
  unverified shards, and leftover temporaries.

The store knows shards, not how they are made: it imports nothing of attacks, models, training
or data. A shard records its attack's config as given (any config dataclass with a ``name``);
running an attack into a shard is the sweep's attack job (:mod:`medhpc.sweep.produce`).
Importing this package does not import torch (``verify`` starts in a fraction of a second).
"""

from medhpc.store.integrity import ShardError, read_sidecar, sha256_file, sidecar_path
from medhpc.store.reader import ShardInfo, ShardReader, find_gaps, open_shard, read_info
from medhpc.store.schema import FIELDS, FORMAT, SCHEMA_VERSION, shard_filename
from medhpc.store.verify import Problem, VerifyReport, verify_dir, verify_shard
from medhpc.store.writer import ShardMeta, ShardWriter, write_shard

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
