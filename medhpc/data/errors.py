"""Errors raised for bad datasets, so callers can tell input problems from bugs.

Every message names the culprit (file, folder, row, id) so that a user can fix
the data without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path

from medhpc.errors import MedhpcError


class DataError(MedhpcError, ValueError):
    """A dataset, manifest, cache or option is malformed or missing."""


class BadImageError(DataError):
    """An image (or mask) file cannot be decoded completely.

    Parameters
    ----------
    path
        The offending file; kept as an attribute so ``skip_bad`` can report it.
    reason
        What the decoder said, in one line.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot decode image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # Keep the exception picklable across process pools.
        return (type(self), (self.path, self.reason))
