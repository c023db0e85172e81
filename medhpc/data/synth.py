"""Synthetic stand-ins for APTOS 2019 and Kermany chest X-rays, on disk.

The files are written in the distributors' exact layouts (see
:mod:`medhpc.data.readers`) so tests, CI and demos exercise the real readers
without the real data, which cannot be redistributed. Class balances follow
the real datasets. Each image is drawn from its own generator seeded by
``(seed, kind, index)``, so output is byte-identical for a given seed whether
it is written by one process or many.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from medhpc.data import painters
from medhpc.data.errors import DataError
from medhpc.data.readers import (
    APTOS_COLUMNS,
    APTOS_CSV,
    APTOS_IMAGES,
    CXR_CLASSES,
    CXR_DIR,
    CXR_SPLITS,
    MASKS_DIR,
)
from medhpc.data.split import allocate

log = logging.getLogger(__name__)

#: Fraction of positives (DR grade > 0) in APTOS 2019: 1857 / 3662.
APTOS_POSITIVE = 0.5071
#: Counts of grades 1-4 among APTOS positives, used as proportions.
APTOS_POSITIVE_GRADES = (370, 999, 193, 295)
#: Fraction of PNEUMONIA in Kermany: 4273 / 5856.
CXR_POSITIVE = 0.7297
#: Official train/test/val sizes per class, used as proportions.
CXR_SPLIT_SIZES = {"NORMAL": (1341, 234, 8), "PNEUMONIA": (3875, 390, 8)}
#: Smallest n for which every CXR split/class folder gets an image.
CXR_MIN_N = 11
#: Share of CXR images saved as RGB JPEGs, as a few real ones are.
CXR_RGB_SHARE = 0.02

SYNTH_KINDS = ("aptos", "cxr")
_KIND_CODE = {"aptos": 1, "cxr": 2}


SYNTH_RECORD = "synth.json"  # written last by make_synthetic: the folder is complete


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`make_synthetic` wrote."""

    root: Path
    kind: str
    n_images: int
    n_positive: int


@dataclass(frozen=True)
class _Paint:
    """Painter settings shared by every image of one dataset."""

    kind: str
    seed: int
    size: int
    lesion_contrast: float
    lesions: int


@dataclass(frozen=True)
class _Task:
    index: int
    image: Path
    mask: Path | None
    grade: int  # APTOS grade, or CXR label
    paint: _Paint


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _render(task: _Task) -> None:
    """Paint and save one image (and mask); runs in worker processes."""
    p = task.paint
    rng = np.random.default_rng([p.seed, _KIND_CODE[p.kind], task.index])
    if p.kind == "aptos":
        image, mask = painters.paint_fundus(rng, p.size, task.grade, p.lesion_contrast, p.lesions)
        # Level 1: twice as fast as the default, and noisy images barely shrink more.
        Image.fromarray(image, mode="RGB").save(task.image, format="PNG", compress_level=1)
    else:
        image, mask = painters.paint_cxr(rng, p.size, bool(task.grade), p.lesion_contrast, p.lesions)
        pil = Image.fromarray(image, mode="L")
        if rng.random() < CXR_RGB_SHARE:
            pil = pil.convert("RGB")
        pil.save(task.image, format="JPEG", quality=90)
    if task.mask is not None:
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(
            task.mask, format="PNG"
        )


def _run(tasks: list[_Task], workers: int, desc: str) -> None:
    folders = {t.image.parent for t in tasks} | {t.mask.parent for t in tasks if t.mask is not None}
    for folder in sorted(folders):
        folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=None)
    try:
        if workers <= 1 or len(tasks) < 2:
            for task in tasks:
                _render(task)
                bar.update()
        else:
            chunk = max(1, len(tasks) // (workers * 8))
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_render, tasks, chunksize=chunk):
                    bar.update()
    finally:
        bar.close()


def _unique_hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    """APTOS-style 12-hex-digit id codes, unique."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        code = rng.bytes(6).hex()
        if code not in seen:
            seen.add(code)
            ids.append(code)
    return ids


def _aptos_tasks(out: Path, n: int, paint: _Paint, n_unlabelled: int) -> tuple[list[_Task], int]:
    rng = np.random.default_rng([paint.seed, _KIND_CODE["aptos"]])
    n_pos = _round_half_up(APTOS_POSITIVE * n)
    grades = [0] * (n - n_pos)
    for grade, count in enumerate(allocate(n_pos, APTOS_POSITIVE_GRADES), start=1):
        grades += [grade] * count
    grades = [grades[i] for i in rng.permutation(n)]
    ids = _unique_hex_ids(rng, n + n_unlabelled)
    rows = sorted(zip(ids[:n], grades, strict=True))
    with (out / APTOS_CSV).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(APTOS_COLUMNS)
        writer.writerows(rows)
    tasks = [
        _Task(i, out / APTOS_IMAGES / f"{code}.png", out / MASKS_DIR / APTOS_IMAGES / f"{code}.png",
              grade, paint)
        for i, (code, grade) in enumerate(rows)
    ]
    # Unlabelled images, as in the real archive's test_images/ (no masks).
    for j, code in enumerate(sorted(ids[n:])):
        grade = int(rng.integers(0, 5))
        tasks.append(_Task(n + j, out / "test_images" / f"{code}.png", None, grade, paint))
    return tasks, n_pos


def cxr_folder_counts(n: int) -> dict[tuple[str, str], int]:
    """Images per (split, class) folder: real class balance and split proportions.

    Every folder gets at least one image (taken from the fullest split of that
    class), which needs ``n >= CXR_MIN_N``.
    """
    n_pos = _round_half_up(CXR_POSITIVE * n)
    counts: dict[tuple[str, str], int] = {}
    for cls, total in zip(CXR_CLASSES, (n - n_pos, n_pos), strict=True):
        per_split = list(allocate(total, CXR_SPLIT_SIZES[cls]))
        for i in range(len(per_split)):
            if per_split[i] == 0:
                donor = max(range(len(per_split)), key=lambda k: per_split[k])
                per_split[donor] -= 1
                per_split[i] += 1
        for split, count in zip(CXR_SPLITS, per_split, strict=True):
            counts[(split, cls)] = count
    return counts


def _cxr_tasks(out: Path, n: int, paint: _Paint) -> tuple[list[_Task], int]:
    rng = np.random.default_rng([paint.seed, _KIND_CODE["cxr"]])
    tasks: list[_Task] = []
    n_pos = 0
    person = 0
    for (split, cls), count in cxr_folder_counts(n).items():
        label = CXR_CLASSES.index(cls)
        n_pos += count * label
        for k in range(count):
            if label == 0:
                name = f"IM-{k + 1:04d}-0001.jpeg"
            else:
                person += 1
                cause = "bacteria" if rng.random() < 0.64 else "virus"
                name = f"person{person}_{cause}_{k + 1}.jpeg"
            image = out / CXR_DIR / split / cls / name
            mask = out / MASKS_DIR / CXR_DIR / split / cls / f"{image.stem}.png"
            tasks.append(_Task(len(tasks), image, mask, label, paint))
    return tasks, n_pos


def make_synthetic(
    kind: str,
    out: Path | str,
    n: int,
    size: int = 224,
    seed: int = 0,
    lesion_contrast: float | None = None,
    lesions: int | None = None,
    workers: int = 1,
    n_unlabelled: int = 3,
) -> SynthSummary:
    """Write ``n`` labelled synthetic images of ``kind`` (``aptos`` or ``cxr``) to ``out``.

    Parameters
    ----------
    lesion_contrast, lesions
        Strength and count scale of lesions; ``None`` uses the painter defaults,
        which are tuned so that the task is learnable but not trivial.
    workers
        Processes to paint with; the output does not depend on it.
    n_unlabelled
        Extra unlabelled APTOS ``test_images/``, as in the real archive.

    ``out`` must be missing or empty, so that leftovers from another run can
    never be mixed in, or hold a finished generation with the very same parameters
    (recorded last, in ``synth.json``), which is then kept as it is: reruns are free.
    """
    if kind not in SYNTH_KINDS:
        raise DataError(f"unknown synthetic kind {kind!r}; known kinds: {', '.join(SYNTH_KINDS)}")
    if size < 8:
        raise DataError(f"image size must be at least 8 pixels, got {size}")
    min_n = CXR_MIN_N if kind == "cxr" else 1
    if n < min_n:
        raise DataError(
            f"{kind} needs n >= {min_n}"
            + (" so that each train/test/val class folder gets an image" if kind == "cxr" else "")
            + f", got {n}"
        )
    if lesion_contrast is not None and lesion_contrast < 0:
        raise DataError(f"lesion contrast must be >= 0, got {lesion_contrast}")
    if lesions is not None and lesions < 1:
        raise DataError(f"lesion count must be >= 1, got {lesions}")
    out = Path(out)
    defaults = (
        (painters.FUNDUS_LESION_CONTRAST, painters.FUNDUS_LESIONS)
        if kind == "aptos"
        else (painters.CXR_LESION_CONTRAST, painters.CXR_LESIONS)
    )
    paint = _Paint(
        kind=kind,
        seed=seed,
        size=size,
        lesion_contrast=defaults[0] if lesion_contrast is None else float(lesion_contrast),
        lesions=defaults[1] if lesions is None else int(lesions),
    )
    params = {
        "kind": kind,
        "n": n,
        "size": size,
        "seed": seed,
        "lesion_contrast": paint.lesion_contrast,
        "lesions": paint.lesions,
        "n_unlabelled": n_unlabelled if kind == "aptos" else 0,
    }
    n_pos_done = _finished_generation(out, params)
    if n_pos_done is not None:
        return SynthSummary(root=out, kind=kind, n_images=n, n_positive=n_pos_done)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "aptos":
        tasks, n_pos = _aptos_tasks(out, n, paint, n_unlabelled)
    else:
        tasks, n_pos = _cxr_tasks(out, n, paint)
    _run(tasks, workers, desc=f"synth {kind}")
    record = out / SYNTH_RECORD
    tmp = record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"params": params, "n_positive": n_pos}, indent=2) + "\n")
    os.replace(tmp, record)  # written last: its presence means the folder is complete
    log.info("wrote %d synthetic %s images (%d positive) to %s", n, kind, n_pos, out)
    return SynthSummary(root=out, kind=kind, n_images=n, n_positive=n_pos)


def _finished_generation(out: Path, params: dict[str, object]) -> int | None:
    """The positive count of a finished generation with ``params`` already in ``out``, or None
    when ``out`` is missing or empty; any other content is an error that names the folder."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    record = out / SYNTH_RECORD
    if not out.is_dir() or not record.is_file():
        raise DataError(f"output folder is not empty and holds no finished synthetic dataset: {out}")
    try:
        found = json.loads(record.read_text())
        old, n_pos = found["params"], int(found["n_positive"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{record}: unreadable synthetic-dataset record ({exc})") from exc
    if old != params:
        diff = ", ".join(f"{k}: {old.get(k)!r} there, {v!r} asked" for k, v in params.items() if old.get(k) != v)
        raise DataError(f"{out} already holds a synthetic dataset with other parameters ({diff}); choose another --out")
    log.info("%s already holds this synthetic %s dataset (%s); keeping it", out, params["kind"], record)
    return n_pos
