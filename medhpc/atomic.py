"""Write files so that a crash or SIGKILL never leaves a half-written one in place.

Everything a rerun trusts (checkpoints, metrics, shards) is written to a temporary name in
the same folder, flushed to disk, and renamed over the target: the rename is atomic, so the
target is either the old complete file or the new complete one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it
    is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file private (0600); outputs on a shared cluster get the usual umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_with(path: Path | str, writer: Callable[[IO[bytes]], object]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer(fh)


def save_torch(obj: Any, path: Path | str) -> None:
    """``torch.save`` through a temporary file."""
    import torch  # here, so that torch-free tools (verify) can use this module

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_json(obj: Any, path: Path | str) -> None:
    """Pretty JSON through a temporary file."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    write_with(path, lambda fh: fh.write(text.encode()))


def write_text(text: str, path: Path | str) -> None:
    write_with(path, lambda fh: fh.write(text.encode()))
