"""Check a folder of shards: every truncated, altered, missing or unverified shard, and leftovers.

What is checked, per shard file (``*.h5``, recursively):

* it opens as HDF5 (else **truncated**: a cut file fails HDF5's end-of-file check);
* it is a shard of a known schema version whose datasets have the promised shapes (else
  **invalid**); HDF5 files that are not shards and have no sidecar (a prepared data cache
  kept beside the shards) are skipped and counted;
* every chunk of every dataset reads back (a ``fletcher32`` failure, or any other damage
  to an opened file, is **altered**: HDF5 refuses to open a file shorter than the length its
  superblock records, so a cut file never gets this far);
* its SHA-256 matches its sidecar ``NAME.h5.sha256`` (mismatch: **altered**; no sidecar:
  **unverified**, since a complete shard gets its sidecar only after the rename);
* a conventionally named shard (``<hash>-<start>-<stop>.h5``) holds what its name says
  (else **altered**: a swapped or renamed shard).

Per set (shards sharing ``config_hash``): the shards agree on attack, model, split and shapes
(else **invalid**), do not overlap (**overlap**), and tile ``[0, set_size)`` — a hole, or a
missing tail when ``set_size`` is known, is **missing**, as is a sidecar whose shard is gone.
Temporaries of interrupted writes (``.NAME.<random>.tmp``) are **temporary**: the next write of
that shard removes them. Run verify when no writer is active, or pass ``ignore_tmp``.

A set whose every shard and sidecar were deleted leaves no trace to find here; the sweep,
which knows which sets to expect, checks that.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py

from medhpc.store.integrity import ShardError, read_sidecar, sha256_file, sidecar_path
from medhpc.store.reader import ShardInfo, find_gaps, info_from_file, open_shard
from medhpc.store.schema import FIELDS, FORMAT, SIDECAR_SUFFIX, is_temporary, parse_shard_filename

log = logging.getLogger(__name__)

ProblemKind = Literal["truncated", "altered", "missing", "unverified", "invalid", "overlap", "temporary"]
KINDS: tuple[str, ...] = ("truncated", "altered", "missing", "unverified", "invalid", "overlap", "temporary")


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the file (or folder, for a gap) and what is wrong with it."""

    path: Path
    kind: ProblemKind
    message: str

    def line(self, root: Path | None = None) -> str:
        """``KIND path: message`` with ``path`` relative to ``root`` where possible."""
        shown = self.path
        if root is not None:
            try:
                shown = self.path.relative_to(root)
            except ValueError:
                pass
        return f"{self.kind.upper()} {shown}: {self.message}"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_dir`: problems, and counts for the summary line."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    shards: int = 0
    verified: int = 0
    sets: dict[str, int] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong (every shard verifies, no gaps, no leftovers)."""
        return not self.problems

    def count(self, kind: str) -> int:
        return sum(p.kind == kind for p in self.problems)

    def lines(self) -> list[str]:
        """One line per problem, then the summary line."""
        return [p.line(self.root) for p in self.problems] + [self.summary()]

    def summary(self) -> str:
        base = f"{self.root}: {self.shards} shard(s) in {len(self.sets)} set(s), {self.verified} verified" + (
            f", {len(self.skipped)} other HDF5 file(s) skipped" if self.skipped else ""
        )
        if self.ok:
            return f"OK {base}"
        counts = ", ".join(f"{self.count(k)} {k}" for k in KINDS if self.count(k))
        return f"FAILED {base}; {len(self.problems)} problem(s): {counts}"


@dataclass
class _Checked:
    path: Path
    info: ShardInfo | None
    problems: list[Problem]
    is_shard: bool = True


def _read_all_chunks(h5: h5py.File, path: Path) -> list[Problem]:
    """Read every chunk of every dataset, so HDF5 checks each chunk's fletcher32 checksum.

    Any failure is **altered**: the file opened, so HDF5 has already checked its length.
    """
    problems: list[Problem] = []
    for name in list(h5.keys()):
        try:
            ds = h5[name]
            if not isinstance(ds, h5py.Dataset):
                continue
            slices: list[tuple[slice, ...]] = list(ds.iter_chunks()) if ds.chunks else [()]
        except Exception as exc:  # noqa: BLE001 - damaged metadata raises KeyError, RuntimeError, OSError...
            problems.append(Problem(path, "altered", f"dataset {name!r} cannot be opened ({exc})"))
            continue
        bad: list[tuple[tuple[slice, ...], str]] = []
        for where in slices:
            try:
                ds[where]
            except Exception as exc:  # noqa: BLE001
                bad.append((where, str(exc)))
        if not bad:
            continue
        where, text = bad[0]
        axis = FIELDS[name].image_axis if name in FIELDS else 0
        span = where[axis] if len(where) > axis else slice(None)
        rows = f"images {span.start}..{span.stop - 1}" if span.start is not None else "all images"
        checksum = "checksum" in text.lower() or "filter" in text.lower()
        plural = len(bad) > 1
        if checksum:
            what = "fail their fletcher32 checksum" if plural else "fails its fletcher32 checksum"
        else:
            what = "cannot be read"
        problems.append(
            Problem(
                path,
                "altered",
                f"dataset {name!r}: {len(bad)} of {len(slices)} chunk(s) {what} (first: {rows}; {text})",
            )
        )
    return problems


def _check_sidecar(path: Path) -> list[Problem]:
    side = sidecar_path(path)
    try:
        digest, named = read_sidecar(path)
    except FileNotFoundError:
        return [
            Problem(path, "unverified", f"no checksum sidecar {side.name} (the write did not finish, or it was lost)")
        ]
    except (ShardError, UnicodeDecodeError) as exc:
        return [Problem(path, "altered", f"unreadable checksum sidecar: {exc}")]
    problems = []
    if named != path.name:
        problems.append(Problem(path, "altered", f"sidecar {side.name} names {named!r}, not this file"))
    actual = sha256_file(path)
    if actual != digest:
        problems.append(Problem(path, "altered", f"SHA-256 mismatch: file {actual[:16]}..., sidecar {digest[:16]}..."))
    return problems


def _check_file(path: Path, read_data: bool) -> _Checked:
    try:
        h5 = open_shard(path)
    except ShardError as exc:
        return _Checked(path, None, [Problem(path, "truncated", str(exc).removeprefix(f"{path}: "))])
    info: ShardInfo | None = None
    problems: list[Problem] = []
    try:
        with h5:
            if h5.attrs.get("format") != FORMAT and not sidecar_path(path).exists():
                return _Checked(path, None, [], is_shard=False)
            try:
                info = info_from_file(h5, path)
            except ShardError as exc:
                problems.append(Problem(path, "invalid", str(exc).removeprefix(f"{path}: ")))
            if read_data:
                problems += _read_all_chunks(h5, path)
    except Exception as exc:  # noqa: BLE001 - damaged HDF5 metadata raises KeyError, RuntimeError, OSError...
        info = None
        problems.append(Problem(path, "altered", f"damaged HDF5 structure ({type(exc).__name__}: {exc})"))
    problems += _check_sidecar(path)
    named = parse_shard_filename(path.name)
    if info is not None and named is not None and named != (info.config_hash, info.start, info.stop):
        problems.append(
            Problem(
                path, "altered",
                f"name says set {named[0]} images [{named[1]}, {named[2]}), but the file holds set "
                f"{info.config_hash} images [{info.start}, {info.stop}) (swapped or renamed shard)",
            )
        )  # fmt: skip
    return _Checked(path, info, problems)


def verify_shard(path: Path | str, *, read_data: bool = True) -> list[Problem]:
    """Problems of one shard (empty when it verifies): what a rerun checks before skipping it."""
    path = Path(path)
    if not path.is_file():
        return [Problem(path, "missing", "shard does not exist")]
    checked = _check_file(path, read_data)
    if not checked.is_shard:
        return [Problem(path, "invalid", f"not a medhpc shard (no format attribute {FORMAT!r})")]
    return checked.problems


_AGREE = ("attack_hash", "model_hash", "split", "samples", "classes", "image_shape", "image_dtype")


def _check_set(set_hash: str, infos: list[ShardInfo], claimed: list[tuple[int, int]]) -> list[Problem]:
    """Agreement, overlaps and gaps of one set; ``claimed`` are the ranges that damaged shards
    of the set hold by their conventional names (already reported, so not gaps too)."""
    problems: list[Problem] = []
    infos = sorted(infos, key=lambda i: (i.start, i.stop, str(i.path)))
    first = infos[0]
    for info in infos[1:]:
        for key in _AGREE:
            if getattr(info, key) != getattr(first, key):
                problems.append(
                    Problem(
                        info.path, "invalid",
                        f"{key} {getattr(info, key)!r} differs from {getattr(first, key)!r} of {first.path.name}, "
                        f"though both claim set {set_hash}",
                    )
                )  # fmt: skip
                break
    sizes = sorted({i.attrs["set_size"] for i in infos})
    if len(sizes) > 1:
        problems.append(Problem(first.path, "invalid", f"shards of set {set_hash} disagree on set_size: {sizes}"))
    at_stop: ShardInfo | None = None
    for info in infos:
        if at_stop is not None and info.start < at_stop.stop:
            problems.append(
                Problem(
                    info.path, "overlap",
                    f"images [{info.start}, {info.stop}) overlap {at_stop.path.name} [{at_stop.start}, {at_stop.stop})",
                )
            )  # fmt: skip
        if at_stop is None or info.stop > at_stop.stop:
            at_stop = info
    set_size = max(sizes)
    for a, b in find_gaps([(i.start, i.stop) for i in infos] + claimed, set_size):
        before = [i for i in infos if i.stop <= a]
        after = [i for i in infos if i.start >= b]
        where = []
        if before:
            where.append(f"after {before[-1].path.name}")
        if after:
            where.append(f"before {after[0].path.name}")
        folder = (after[0] if after else before[-1] if before else first).path.parent
        problems.append(
            Problem(
                folder, "missing",
                f"set {set_hash}: no shard holds images [{a}, {b})" + (f" ({', '.join(where)})" if where else ""),
            )
        )  # fmt: skip
    return problems


def verify_dir(root: Path | str, *, read_data: bool = True, ignore_tmp: bool = False) -> VerifyReport:
    """Verify every shard under ``root`` (recursively) and the sets they form.

    Parameters
    ----------
    root : a folder of shards (a sweep's output tree).
    read_data : read every chunk (fletcher32 checks, localises damage); False checks only
        attributes and whole-file SHA-256 (which still detects any changed byte).
    ignore_tmp : do not report temporaries (while writers may be running).

    Returns
    -------
    A :class:`VerifyReport`; ``report.ok`` is True when everything verifies.

    Raises
    ------
    ShardError
        ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ShardError(f"{root}: not a folder")
    report = VerifyReport(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    shards = [p for p in files if p.suffix == ".h5" and not p.name.startswith(".")]
    present = set(shards)
    problems: list[Problem] = []
    for p in files:
        if is_temporary(p.name):
            if not ignore_tmp:
                problems.append(
                    Problem(p, "temporary", "left by an interrupted write; the next write of that shard removes it")
                )
        elif p.name.endswith(".h5" + SIDECAR_SUFFIX) and p.with_name(p.name[: -len(SIDECAR_SUFFIX)]) not in present:
            problems.append(
                Problem(p, "missing", f"checksum sidecar of {p.name[: -len(SIDECAR_SUFFIX)]}, which is gone")
            )
    sets: dict[str, list[ShardInfo]] = defaultdict(list)
    claimed: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for path in shards:
        log.debug("verifying %s", path)
        checked = _check_file(path, read_data)
        if not checked.is_shard:
            report.skipped.append(path)
            continue
        report.shards += 1
        problems += checked.problems
        if not checked.problems:
            report.verified += 1
        if checked.info is not None:
            sets[checked.info.config_hash].append(checked.info)
        elif (named := parse_shard_filename(path.name)) is not None:
            claimed[named[0]].append((named[1], named[2]))
    for set_hash, infos in sorted(sets.items()):
        problems += _check_set(set_hash, infos, claimed.get(set_hash, []))
        report.sets[set_hash] = len(infos)
    order = {k: i for i, k in enumerate(KINDS)}
    report.problems = sorted(problems, key=lambda p: (str(p.path), order[p.kind]))
    for problem in report.problems:
        log.debug("%s", problem.line(root))
    return report


__all__ = ["KINDS", "Problem", "VerifyReport", "verify_dir", "verify_shard"]
