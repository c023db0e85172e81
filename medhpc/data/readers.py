"""Readers for the datasets exactly as their distributors ship them.

Each reader turns a folder into a deterministic list of :class:`Record`, and
fails with a :class:`DataError` naming the culprit file, folder, row or id when
the layout is not what it expects. The synthetic stand-ins in
:mod:`medhpc.data.synth` are written in the same layouts, so these readers are
tested on them and work unchanged on the real downloads.

Lesion masks are optional everywhere: an image ``<base>/<rel>.<ext>`` has the
mask ``<base>/masks/<rel>.png`` when that file exists.

The APTOS and Kermany readers know their whole layout, so anything else where
they look (a ``COVID/`` folder beside ``NORMAL/`` and ``PNEUMONIA/``, a
``README.txt`` among the images, an APTOS image that ``train.csv`` does not
list) is an error naming every such path: it would otherwise be left out of the
cache without a word. ``ignore_unknown=True`` leaves them out and logs each one
with the count (a warning). Known junk is skipped without either: hidden files
(``.DS_Store``, AppleDouble ``._*`` companions) and :data:`JUNK_FILES`. The
generic folder reader takes whatever image files it finds in each class folder
and skips the other files, by design: it has no layout to check against.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Protocol

from medhpc.data.errors import DataError
from medhpc.data.records import Record, check_unique_ids

log = logging.getLogger(__name__)

#: Extensions the generic folder reader accepts (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Name of the parallel mask tree below a dataset's base folder.
MASKS_DIR = "masks"

APTOS_CSV = "train.csv"
APTOS_IMAGES = "train_images"
APTOS_COLUMNS = ("id_code", "diagnosis")
APTOS_GRADES = range(0, 5)

CXR_DIR = "chest_xray"
CXR_SPLITS = ("train", "test", "val")
CXR_CLASSES = ("NORMAL", "PNEUMONIA")
CXR_EXTENSIONS = (".jpeg", ".jpg", ".png")

# Folders that archives add and that never hold a class.
_IGNORED_DIRS = {"__MACOSX", MASKS_DIR}
#: Files that file managers leave in image folders (compared case-insensitively); skipped
#: like hidden files, never reported as unknown.
JUNK_FILES = ("thumbs.db", "desktop.ini")
#: How many unknown paths an error or warning spells out (the count is always given).
_SHOWN = 20


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is an existing folder, else raise naming it."""
    if not path.exists():
        raise DataError(f"{what} does not exist: {path}")
    if not path.is_dir():
        raise DataError(f"{what} is not a folder: {path}")
    return path


def mask_for(base: Path, image: Path) -> Path | None:
    """Return the lesion mask of ``image`` under ``base/masks`` if it exists."""
    candidate = base / MASKS_DIR / image.relative_to(base).with_suffix(".png")
    return candidate if candidate.is_file() else None


def _is_junk(path: Path) -> bool:
    """Hidden entries (``.DS_Store``, AppleDouble ``._*``) and :data:`JUNK_FILES`."""
    return path.name.startswith(".") or path.name.lower() in JUNK_FILES


def _show(path: Path) -> str:
    return f"{path}/" if path.is_dir() else str(path)


def _unknown(unknown: list[Path], where: Path, expected: str, ignore: bool) -> None:
    """Raise naming every unknown path, or (``ignore``) log them and their count."""
    if not unknown:
        return
    shown = "\n".join(f"  {_show(p)}" for p in unknown[:_SHOWN])
    more = f"\n  ... and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else ""
    if ignore:
        log.warning("ignored %d unknown path(s) in %s (expected %s):\n%s%s",
                    len(unknown), where, expected, shown, more)  # fmt: skip
        return
    raise DataError(
        f"{len(unknown)} unknown path(s) in {where} (expected {expected}):\n{shown}{more}\n"
        "move them out of the dataset, or pass --ignore-unknown (ignore_unknown=True; "
        "ignore_unknown: true in a sweep's dataset) to leave them out"
    )


def _image_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Image files directly in ``folder``, sorted by name.

    Hidden files and AppleDouble ``._*`` companions are skipped: macOS archives
    put one beside every image and they are not images.
    """
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )


def read_aptos(root: Path | str, ignore_unknown: bool = False) -> list[Record]:
    """Read APTOS 2019 from the folder holding ``train.csv`` and ``train_images/``.

    Labels are binary (grade > 0 is referable DR); the grade is kept as metadata.
    ``test_images/`` has no labels and is ignored. Records are in CSV order.
    A file in ``train_images/`` that is not the image of a ``train.csv`` row (an
    unlisted PNG, a ``README.txt``, a folder) is an error naming it, unless
    ``ignore_unknown``: then it is left out and logged.
    """
    root = require_dir(Path(root), "APTOS folder")
    csv_path = root / APTOS_CSV
    if not csv_path.is_file():
        raise DataError(f"APTOS label file not found: {csv_path}")
    images = root / APTOS_IMAGES
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{csv_path} is empty; expected columns {', '.join(APTOS_COLUMNS)}")
        header = [h.strip() for h in header]
        for col in APTOS_COLUMNS:
            if col not in header:
                raise DataError(
                    f"{csv_path} has no column {col!r} (columns found: {', '.join(header)})"
                )
        id_col, dx_col = (header.index(c) for c in APTOS_COLUMNS)
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]

    records: list[Record] = []
    for line, row in rows:
        if len(row) <= max(id_col, dx_col):
            raise DataError(f"{csv_path} line {line}: too few fields in {row!r}")
        image_id = row[id_col].strip()
        if not image_id:
            raise DataError(f"{csv_path} line {line}: empty id_code")
        raw = row[dx_col].strip()
        try:
            grade = int(raw)
        except ValueError:
            grade = -1
        if grade not in APTOS_GRADES:
            raise DataError(
                f"{csv_path} line {line} (id_code {image_id!r}): diagnosis {raw!r} "
                f"is not an integer grade 0-4"
            )
        path = images / f"{image_id}.png"
        if not path.is_file():
            raise DataError(f"no image for id_code {image_id!r}: expected {path}")
        records.append(
            Record(
                id=image_id,
                path=path,
                label=int(grade > 0),
                mask_path=mask_for(root, path),
                grade=grade,
                source_split="train",
            )
        )
    if not records:
        raise DataError(f"{csv_path} lists no images")
    check_unique_ids(records)
    listed = {rec.path.name for rec in records}
    unknown = sorted(p for p in images.iterdir() if p.name not in listed and not _is_junk(p))
    _unknown(unknown, images, f"only the {APTOS_CSV} rows' <id_code>.png images", ignore_unknown)
    return records


def cxr_dirs(root: Path | str) -> tuple[Path, Path]:
    """Return ``(base, chest_xray)`` for either accepted way to name the dataset.

    ``root`` may be the folder that contains ``chest_xray/`` or ``chest_xray/``
    itself (any folder holding the split folders). ``base`` is where the mask
    tree lives: the parent of ``chest_xray/``.
    """
    root = require_dir(Path(root), "chest X-ray folder")
    if (root / CXR_DIR).is_dir():
        return root, root / CXR_DIR
    if any((root / s).is_dir() for s in CXR_SPLITS):
        return root.parent, root
    raise DataError(
        f"{root} holds neither {CXR_DIR}/ nor the split folders {', '.join(CXR_SPLITS)}"
    )


def read_cxr(root: Path | str, ignore_unknown: bool = False) -> list[Record]:
    """Read Kermany chest X-rays, merging the ``train``/``test``/``val`` folders.

    Only ``chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}`` is read, so the
    nested duplicate ``chest_xray/chest_xray/`` and ``__MACOSX/`` folders found in
    some archives are ignored. Ids are ``<split>/<class>/<stem>``, unique across
    splits. NORMAL is 0, PNEUMONIA is 1.

    Anything else in a split folder (another class such as ``COVID/``, a file) or
    in a class folder (a file that is not a ``.jpeg``/``.jpg``/``.png`` image, a
    subfolder) is an error naming every such path, unless ``ignore_unknown``:
    then it is left out and logged. Hidden files and :data:`JUNK_FILES` are skipped.
    """
    base, top = cxr_dirs(root)
    records: list[Record] = []
    unknown: list[Path] = []
    for split in CXR_SPLITS:
        split_dir = require_dir(top / split, "chest X-ray split folder")
        unknown += sorted(p for p in split_dir.iterdir() if p.name not in CXR_CLASSES and not _is_junk(p))
        for label, cls in enumerate(CXR_CLASSES):
            cls_dir = require_dir(split_dir / cls, "chest X-ray class folder")
            files = _image_files(cls_dir, CXR_EXTENSIONS)
            images = set(files)
            unknown += sorted(p for p in cls_dir.iterdir() if p not in images and not _is_junk(p))
            if not files:
                raise DataError(f"class folder has no images: {cls_dir}")
            for path in files:
                records.append(
                    Record(
                        id=f"{split}/{cls}/{path.stem}",
                        path=path,
                        label=label,
                        mask_path=mask_for(base, path),
                        source_split=split,
                    )
                )
    expected = f"{'/, '.join(CXR_CLASSES)}/ in each split folder, {', '.join(CXR_EXTENSIONS)} images in them"
    _unknown(unknown, top, expected, ignore_unknown)
    check_unique_ids(records)
    return records


def folder_classes(root: Path | str) -> list[str]:
    """Class names of a folder-per-class dataset: its subfolders, sorted.

    ``masks/``, ``__MACOSX/`` and hidden folders are not classes.
    """
    root = require_dir(Path(root), "dataset folder")
    classes = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_DIRS
    )
    if not classes:
        raise DataError(f"no class folders in {root}")
    if len(classes) == 1:
        log.warning("only one class folder in %s: %s", root, classes[0])
    return classes


def read_folder(root: Path | str, ignore_unknown: bool = False) -> list[Record]:
    """Read ``root/<class_name>/*.{png,jpg,jpeg,bmp,tif,tiff}``.

    Label indices follow the sorted class names; ids are ``<class>/<stem>``.
    Every subfolder is a class and other files are skipped, so there is nothing
    unknown here: ``ignore_unknown`` is accepted for a uniform reader signature.
    """
    root = Path(root)
    records: list[Record] = []
    for label, cls in enumerate(folder_classes(root)):
        files = _image_files(root / cls, IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"class folder has no images: {root / cls}")
        for path in files:
            records.append(
                Record(id=f"{cls}/{path.stem}", path=path, label=label, mask_path=mask_for(root, path))
            )
    check_unique_ids(records)
    return records


class Reader(Protocol):
    """What :data:`KINDS` maps a kind to."""

    def __call__(self, root: Path | str, ignore_unknown: bool = False) -> list[Record]: ...


#: Dataset kinds by name; the CLI's ``--kind`` choices.
KINDS: dict[str, Reader] = {"aptos": read_aptos, "cxr": read_cxr, "folder": read_folder}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise DataError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")


def read_dataset(kind: str, root: Path | str, ignore_unknown: bool = False) -> list[Record]:
    """Read the dataset of kind ``kind`` (a key of :data:`KINDS`) at ``root``.

    ``ignore_unknown``: leave out (and log) what the reader does not know instead of
    raising; see the module docstring.
    """
    _check_kind(kind)
    records = KINDS[kind](root, ignore_unknown=ignore_unknown)
    log.info("read %d %s images from %s", len(records), kind, root)
    return records


def class_names(kind: str, root: Path | str) -> list[str]:
    """Human names of the label indices, stored with a cache for reports."""
    _check_kind(kind)
    if kind == "aptos":
        return ["no_dr", "dr"]
    if kind == "cxr":
        return list(CXR_CLASSES)
    return folder_classes(root)
