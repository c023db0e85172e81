"""What makes a shard trustworthy on disk: its checksum sidecar, its permissions, the cleanup of
interrupted writes and its ``created`` time; shared by the writer, the reader and ``verify``.

Nothing here imports torch or the rest of the store, so every other store module can import it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from medhpc.errors import MedhpcError
from medhpc.store.schema import SIDECAR_SUFFIX

log = logging.getLogger(__name__)


class ShardError(MedhpcError):
    """A shard that cannot be written or read as asked; the message names the file or field."""


def sidecar_path(path: Path | str) -> Path:
    """``NAME.h5`` -> ``NAME.h5.sha256``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def sha256_file(path: Path | str, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (shards can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


_SIDECAR_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64}) [ *](?P<name>.+)$")


def read_sidecar(path: Path | str) -> tuple[str, str]:
    """``(hex digest, file name)`` from a shard's sidecar (``path`` is the shard or the sidecar).

    Raises
    ------
    FileNotFoundError
        No sidecar: the shard is unverified.
    ShardError
        The sidecar is not one ``sha256sum`` line.
    """
    path = Path(path)
    side = path if path.name.endswith(SIDECAR_SUFFIX) else sidecar_path(path)
    text = side.read_text(encoding="utf-8")
    lines = text.splitlines()
    m = _SIDECAR_LINE.match(lines[0]) if len(lines) == 1 else None
    if m is None:
        raise ShardError(f"{side}: not a sha256sum line ('<64 hex digits>  NAME')")
    return m["digest"], m["name"]


def _readable(path: Path) -> None:
    """Give a file the permissions a plain ``open`` would (``0o666`` less the umask).

    ``atomic_path`` creates its temporary with ``mkstemp``, which makes it private (0600);
    shards are meant to be read by others on a shared cluster.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_sidecar(path: Path | str, digest: str) -> Path:
    """Record ``digest`` as the SHA-256 of shard ``path`` (atomically, ``sha256sum`` format)."""
    from medhpc.atomic import write_text  # medhpc.atomic imports torch: keep verify free of it

    path = Path(path)
    side = sidecar_path(path)
    write_text(f"{digest}  {path.name}\n", side)
    _readable(side)
    return side


def _temporary_pattern(name: str) -> re.Pattern[str]:
    # atomic_path's temporaries of the shard and of its sidecar: .NAME[.sha256].<random>.tmp
    return re.compile(rf"^\.{re.escape(name)}(?:{re.escape(SIDECAR_SUFFIX)})?\.[A-Za-z0-9_]+\.tmp$")


def remove_stale_temporaries(path: Path | str) -> list[Path]:
    """Delete the temporaries an interrupted write of shard ``path`` left behind.

    Called before every write, so a rerun after a SIGKILL cleans up after the killed writer.
    Only temporaries of this shard and of its sidecar are touched.
    """
    path = Path(path)
    pattern = _temporary_pattern(path.name)
    removed = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            if pattern.match(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
                log.info("removed %s, left by an interrupted write of %s", entry, path.name)
    return removed


def created_time() -> str:
    """The ``created`` attribute: now, or ``SOURCE_DATE_EPOCH`` when set (the reproducible-builds
    convention), so that the same inputs give byte-identical shards and equal sidecars."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            when = datetime.fromtimestamp(int(epoch), UTC)
        except (ValueError, OverflowError, OSError):
            raise ShardError(f"SOURCE_DATE_EPOCH must be whole seconds since 1970, got {epoch!r}") from None
    else:
        when = datetime.now(UTC)
    return when.isoformat(timespec="seconds")


__all__ = [
    "ShardError",
    "created_time",
    "read_sidecar",
    "remove_stale_temporaries",
    "sha256_file",
    "sidecar_path",
    "write_sidecar",
]
