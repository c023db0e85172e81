"""Seeded, stratified train/val/test split and its saved manifest.

The split must be the same on every machine and numpy version for a given
seed and set of ids, so that robustness numbers from different clusters refer
to the same test images. It therefore orders ids by a SHA-256 hash of
``"{seed}:{id}"`` rather than by any random-number generator, and allocates
per-class counts with exact rational arithmetic (largest remainder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from medhpc.data.errors import DataError
from medhpc.data.records import Record

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.05, 0.15)
MANIFEST_FORMAT = 1


def validate_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Check three finite, non-negative fractions summing to 1 (within 1e-6)."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise DataError(f"split fractions must be numbers, got {fractions!r}") from None
    if len(values) != len(SPLITS):
        raise DataError(
            f"need {len(SPLITS)} split fractions ({'/'.join(SPLITS)}), got {len(values)}: {values}"
        )
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise DataError(f"split fractions must be finite and non-negative, got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise DataError(f"split fractions must sum to 1, got {values} (sum {sum(values):g})")
    return values  # type: ignore[return-value]


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse ``"0.8,0.05,0.15"`` (train,val,test) and validate it."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise DataError(
            f"split fractions must be three comma-separated numbers (train,val,test), got {text!r}"
        ) from None
    return validate_fractions(values)


def allocate(n: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Split ``n`` items into counts within one of ``fraction * n`` each.

    Largest-remainder apportionment on exact fractions (decimal value of each
    float), ties going to the earlier split, so the result never depends on
    floating-point rounding.
    """
    exact = [Fraction(repr(float(f))) for f in fractions]
    total = sum(exact)
    quotas = [f / total * n for f in exact]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return tuple(counts)


def hash_key(seed: int, record_id: str) -> str:
    """Sort key placing ids in a seed-dependent, platform-independent order."""
    return hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()


def split_records(
    records: Sequence[Record],
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict[str, list[Record]]:
    """Assign every record to ``train``, ``val`` or ``test``, stratified by label.

    Within each class, ids are ordered by :func:`hash_key` and cut into
    consecutive runs of the sizes from :func:`allocate`. Each split keeps the
    input order of its records.
    """
    fractions = validate_fractions(fractions)
    by_label: dict[int, list[Record]] = {}
    for rec in records:
        by_label.setdefault(rec.label, []).append(rec)
    assigned: dict[str, str] = {}
    for label in sorted(by_label):
        members = sorted(by_label[label], key=lambda r: hash_key(seed, r.id))
        start = 0
        for name, count in zip(SPLITS, allocate(len(members), fractions), strict=True):
            for rec in members[start : start + count]:
                assigned[rec.id] = name
            start += count
    out: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for rec in records:
        out[assigned[rec.id]].append(rec)
    return out


@dataclass(frozen=True)
class ManifestEntry:
    """One image of a manifest; ``path`` and ``mask`` are relative to the root."""

    id: str
    label: int
    split: str
    path: str
    mask: str | None = None


@dataclass(frozen=True)
class SkippedEntry:
    """An image left out by ``skip_bad``, with the decoder's reason."""

    id: str
    path: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    """What was split, how, and where every image went; saved beside a cache."""

    kind: str
    root: str
    seed: int
    fractions: tuple[float, float, float]
    classes: list[str]
    entries: list[ManifestEntry]
    skipped: list[SkippedEntry] = field(default_factory=list)
    format: int = MANIFEST_FORMAT

    def ids(self, split: str) -> list[str]:
        """Ids of one split, in manifest order."""
        return [e.id for e in self.entries if e.split == split]

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys), also the input of :meth:`sha256`."""
        data = asdict(self)
        data["fractions"] = list(self.fractions)
        return json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n"

    def sha256(self) -> str:
        """Hash stored in the cache so a cache and its manifest can be matched."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def build_manifest(
    kind: str,
    root: Path | str,
    splits: dict[str, list[Record]],
    seed: int,
    fractions: Sequence[float],
    classes: Sequence[str],
    skipped: Sequence[SkippedEntry] = (),
) -> Manifest:
    """Describe ``splits`` (from :func:`split_records`) with paths relative to ``root``."""
    root = Path(root).resolve()
    entries = [
        ManifestEntry(
            id=rec.id,
            label=rec.label,
            split=name,
            path=_rel(rec.path.resolve(), root),
            mask=_rel(rec.mask_path.resolve(), root) if rec.mask_path else None,
        )
        for name in SPLITS
        for rec in splits.get(name, [])
    ]
    return Manifest(
        kind=kind,
        root=str(root),
        seed=int(seed),
        fractions=validate_fractions(fractions),
        classes=list(classes),
        entries=entries,
        skipped=list(skipped),
    )


def save_manifest(manifest: Manifest, path: Path | str) -> Path:
    """Write ``manifest`` as JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(manifest.to_json(), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise DataError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DataError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def load_manifest(path: Path | str) -> Manifest:
    """Read and validate a manifest; every error names the file (and entry)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest does not exist: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"manifest {path}: top level must be an object")
    where = f"manifest {path}"
    fmt = _need(data, "format", int, where)
    if fmt != MANIFEST_FORMAT:
        raise DataError(f"{where}: unsupported format {fmt} (this medhpc reads {MANIFEST_FORMAT})")
    try:
        fractions = validate_fractions(_need(data, "fractions", list, where))
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    entries: list[ManifestEntry] = []
    seen: set[str] = set()
    for i, raw in enumerate(_need(data, "entries", list, where)):
        at = f"{where}, entry {i}"
        if not isinstance(raw, dict):
            raise DataError(f"{at}: must be an object")
        entry = ManifestEntry(
            id=_need(raw, "id", str, at),
            label=_need(raw, "label", int, at),
            split=_need(raw, "split", str, at),
            path=_need(raw, "path", str, at),
            mask=raw.get("mask"),
        )
        if entry.split not in SPLITS:
            raise DataError(f"{at}: split {entry.split!r} is not one of {', '.join(SPLITS)}")
        if entry.mask is not None and not isinstance(entry.mask, str):
            raise DataError(f"{at}: 'mask' must be a string or null")
        if entry.id in seen:
            raise DataError(f"{at}: duplicate id {entry.id!r}")
        seen.add(entry.id)
        entries.append(entry)
    skipped = []
    for i, raw in enumerate(data.get("skipped", [])):
        at = f"{where}, skipped entry {i}"
        if not isinstance(raw, dict):
            raise DataError(f"{at}: must be an object")
        skipped.append(
            SkippedEntry(
                id=_need(raw, "id", str, at),
                path=_need(raw, "path", str, at),
                reason=_need(raw, "reason", str, at),
            )
        )
    return Manifest(
        kind=_need(data, "kind", str, where),
        root=_need(data, "root", str, where),
        seed=_need(data, "seed", int, where),
        fractions=fractions,
        classes=[str(c) for c in _need(data, "classes", list, where)],
        entries=entries,
        skipped=skipped,
        format=fmt,
    )
