"""The unit every reader returns: one labelled image on disk.

Readers differ by layout, but everything downstream (split, prepare, cache)
only sees :class:`Record`, so new layouts need only a new reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medhpc.data.errors import DataError


@dataclass(frozen=True)
class Record:
    """One labelled image.

    Attributes
    ----------
    id
        Unique within the dataset and stable across machines; the split hashes it.
    path
        The image file.
    label
        Class index used for training (binary tasks: 1 = disease).
    mask_path
        Binary lesion mask of the same size, when the dataset ships one.
    grade
        Finer label kept as metadata (APTOS DR grade 0-4), else ``None``.
    source_split
        The distributor's split folder (Kermany ``train``/``test``/``val``), else ``None``.
    """

    id: str
    path: Path
    label: int
    mask_path: Path | None = None
    grade: int | None = None
    source_split: str | None = None


def check_unique_ids(records: list[Record]) -> None:
    """Raise :class:`DataError` naming both files if two records share an id.

    Ids key the split and the cache, so a duplicate would silently drop data.
    """
    seen: dict[str, Path] = {}
    for rec in records:
        if rec.id in seen:
            raise DataError(
                f"duplicate image id {rec.id!r}: {seen[rec.id]} and {rec.path}"
            )
        seen[rec.id] = rec.path
