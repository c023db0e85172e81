"""One model's evaluation from its stored attack shards: the robustness table, uncertainty
(detection and abstention) per attack, each attack on an uncertainty detector against the
detector it attacked beside its non-adaptive counterpart (:mod:`medhpc.report.adaptive`), and
Grad-CAM / attention maps clean and under attack.

This is the sweep's ``evaluate`` job. It reads the shards (verified), the prepared cache (the
clean images and lesion masks) and the trained model (only for the maps), and writes
``NAME.json`` (numbers, curves thinned for plotting) and, with maps, ``NAME.maps.npz`` (the
raw maps and thumbnails of the images the report draws). The JSON is written last: its
``format`` marks a finished evaluation of this version.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from medhpc import __version__, atomic
from medhpc.report.config import ReportSettings
from medhpc.report.uncertainty import attack_uncertainty

log = logging.getLogger(__name__)

#: Version of the evaluation JSON; an older file is not a finished evaluation (3: the maps file
#: also holds the gallery's adversarial thumbnails, perturbations and confidences; 4: a row of
#: an attack on an uncertainty detector holds its ``adaptive`` block).
EVAL_FORMAT = 4
#: Figures draw images at most this large (the maps stay at their layer's resolution).
THUMBNAIL = 128

_ROW_FIELDS = ["labels", "clean_pred", "adv_pred", "success", "l2", "linf", "clean_probs", "adv_probs"]
_SAMPLE_FIELDS = ["clean_sample_probs", "adv_sample_probs"]


def _perturbs(row: dict[str, Any]) -> bool:
    """Whether a row's attack changes the images (not the clean evaluation ``none``)."""
    from medhpc.attacks.registry import get_attack

    return get_attack(row["config"]["attack"]).perturbs


def _totals(f: dict[str, np.ndarray]) -> dict[str, float]:
    ok = f["success"].astype(np.float64)
    l2, linf = f["l2"].astype(np.float64), f["linf"].astype(np.float64)
    return {"n": float(ok.size), "correct": float(np.sum(f["adv_pred"] == f["labels"])), "success": ok.sum(),
            "l2": l2.sum(), "linf": linf.sum(), "l2_success": (l2 * ok).sum(),
            "linf_success": (linf * ok).sum()}  # fmt: skip


def attack_rows(shard_sets: tuple[str, ...], settings: ReportSettings) -> list[dict[str, Any]]:
    """One row per shard set, as :func:`medhpc.attacks.evaluate_robustness` builds its rows,
    with the attack's uncertainty results under ``uncertainty`` and, for an attack on an
    uncertainty detector, the detector against it and its non-adaptive counterpart under
    ``adaptive`` (:func:`adaptive_rows`)."""
    from medhpc.attacks.config import AttackConfig
    from medhpc.attacks.robustness import attack_row, member_breaks
    from medhpc.config import from_dict
    from medhpc.store import ShardReader

    rows, sets = [], []
    for folder in shard_sets:
        reader = ShardReader(folder, verify=True, strict=True)
        stochastic = int(reader.attrs.get("samples", 0) or 0) > 0
        f = reader.read(_ROW_FIELDS + (_SAMPLE_FIELDS if stochastic else []))
        attack = from_dict(AttackConfig, reader.attack_config, source=folder)
        row = {**attack_row(attack, _totals(f)), "shards": folder}
        if "broken_by" in reader.fields and attack.members is not None:
            broken = reader.read(["broken_by"])["broken_by"] + 1
            row["broken_by"] = member_breaks(attack, np.bincount(broken, minlength=len(attack.members) + 1).tolist())
        row["uncertainty"] = attack_uncertainty(
            f, fpr=settings.fpr, coverages=settings.coverages, detect=attack.spec.perturbs
        )
        rows.append(row)
        sets.append(_Set(folder, attack, reader, f))
    adaptive_rows(rows, sets, settings)
    return rows


@dataclass
class _Set:
    """One shard set as :func:`attack_rows` read it."""

    folder: str
    attack: Any  # AttackConfig
    reader: Any  # ShardReader
    fields: dict[str, np.ndarray]

    def same_model(self, other: _Set) -> bool:
        a, b = self.reader.attrs, other.reader.attrs
        return bool(a["model_hash"] == b["model_hash"] and a["split"] == b["split"])


def adaptive_rows(rows: list[dict[str, Any]], sets: list[_Set], settings: ReportSettings) -> None:
    """Give each row of an attack on an uncertainty detector (spec ``calibrated``) its
    ``adaptive`` block (:func:`medhpc.report.adaptive.adaptive_block`): the detector every
    shard of its set records, measured on the set and on the set of the same model (and split)
    whose attack is the config's :meth:`~medhpc.attacks.AttackConfig.non_adaptive` counterpart
    (compared by config hash; ``non_adaptive`` None where there is none)."""
    from medhpc.config import config_hash
    from medhpc.report.adaptive import adaptive_block, check_samples, set_detector

    for row, s in zip(rows, sets, strict=True):
        if not s.attack.spec.calibrated:
            continue
        det = set_detector(s.reader.shards, s.folder)
        check_samples(det, int(s.reader.attrs.get("samples", 0) or 0), s.folder)
        plain = s.attack.non_adaptive()
        want = None if plain is None else config_hash(plain)
        match = next((o for o, r in zip(sets, rows, strict=True) if r["hash"] == want and o.same_model(s)), None)
        counterpart = None
        if match is not None:
            check_samples(det, int(match.reader.attrs.get("samples", 0) or 0), match.folder)
            same = bool(np.array_equal(match.reader.index, s.reader.index))
            if not same:
                log.warning("%s: its non-adaptive counterpart %s holds other images", s.folder, match.folder)
            counterpart = (match.attack.name, match.folder, match.fields, same)
        else:
            log.warning("%s: no shard set of its non-adaptive counterpart %s among %d sets", s.folder,
                        None if plain is None else plain.name, len(sets))  # fmt: skip
        row["adaptive"] = adaptive_block(det, s.fields, settings.coverages, counterpart,
                                         None if plain is None else plain.name)  # fmt: skip


def _clean_images(
    cache: str, split: str, index: np.ndarray, image_size: int | None, device: Any
) -> tuple[Any, np.ndarray | None]:
    """The clean images at ``index`` as the model took them, and their lesion masks (None when
    the cache has none) at the same size."""
    import torch
    import torch.nn.functional as F

    from medhpc.data.cache import CacheDataset, cache_info, prepare_batch

    with_mask = split in cache_info(cache)["masks"]  # real data sets come without lesion masks
    ds = CacheDataset(cache, split, with_mask=with_mask)
    try:
        arrays = ds.read_batch(index)
    finally:
        ds.close()
    x = prepare_batch(torch.from_numpy(arrays[0]).permute(0, 3, 1, 2), torch.device(device), image_size, False)
    if not with_mask:
        return x, None
    m = torch.from_numpy(arrays[2]).float()[:, None]
    if m.shape[-1] != x.shape[-1]:
        m = F.interpolate(m, size=tuple(x.shape[-2:]), mode="nearest")
    return x, (m[:, 0].numpy() > 0)


def _shrink(x: Any) -> Any:
    """Images (B, C, H, W) at the thumbnail size, antialiased, as float32 on the CPU."""
    import torch.nn.functional as F

    size = min(THUMBNAIL, x.shape[-1])
    t = x.detach().float().cpu()
    if t.shape[-1] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t


def _to_uint8(t: Any) -> np.ndarray:
    """(B, C, H, W) in [0, 1] as (B, H, W, C) bytes."""
    import torch

    return (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _thumbnails(x: Any, masks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F

    t = _shrink(x)
    size = t.shape[-1]
    images = _to_uint8(t)
    if masks is None:
        return images, np.zeros(images.shape[:3], dtype=bool)
    m = F.interpolate(torch.from_numpy(masks.astype(np.float32))[:, None], size=(size, size), mode="nearest")
    return images, m[:, 0].numpy() > 0


def _pick(masks: np.ndarray | None, n: int, k: int) -> np.ndarray:
    """Positions of the images to draw: those with a lesion first, then the rest, in order."""
    order = np.arange(n)
    if masks is not None:
        lesion = masks.reshape(n, -1).any(1)
        order = np.r_[order[lesion], order[~lesion]]
    return np.sort(order[:k])


def map_results(
    run: str, rows: list[dict[str, Any]], cache: str, split: str, image_size: int | None,
    settings: ReportSettings, device: str,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # fmt: skip
    """Maps of the first ``map_images`` images, clean and under each attack, their scores
    (added to each row under ``maps``) and the arrays the report's figures draw."""
    import torch

    from medhpc.device import resolve_device
    from medhpc.models.checkpoint import load_model
    from medhpc.report import maps as M
    from medhpc.store import ShardReader

    dev = resolve_device(device)
    model, _ = load_model(run, dev)
    first = ShardReader(rows[0]["shards"], verify=False)
    n = len(first) if settings.map_images is None else min(len(first), settings.map_images)
    head = first.read_range(0, n, ["index", "labels", "clean_pred", "clean_probs"])
    x, masks = _clean_images(cache, split, head["index"], image_size, dev)
    size = x.shape[-1]
    labels = torch.from_numpy(head["labels"]).to(dev)
    target = labels if settings.target == "label" else torch.from_numpy(head["clean_pred"]).to(dev)
    clean = M.model_maps(model, x, target)
    kinds = list(clean)
    clean_up = {k: M.upsample(v, size) for k, v in clean.items()}
    summary: dict[str, Any] = {"n": n, "image_size": size, "grid": settings.grid, "target": settings.target,
                               "kinds": kinds,
                               "clean": {k: M.score(clean_up[k], masks, settings.grid) for k in kinds}}  # fmt: skip
    pick = _pick(masks, n, settings.figure_images)
    x_pick = x[torch.from_numpy(pick).to(dev)]
    images, thumb_masks = _thumbnails(x_pick, None if masks is None else masks[pick])
    arrays: dict[str, np.ndarray] = {"images": images, "masks": thumb_masks, "index": head["index"][pick],
                                     "labels": head["labels"][pick], "clean_pred": head["clean_pred"][pick],
                                     "clean_conf": _confidence(head["clean_probs"][pick], head["clean_pred"][pick]),
                                     "attacks": np.array([r["name"] for r in rows if _perturbs(r)])}  # fmt: skip
    for k in kinds:
        arrays[f"{k}_clean"] = clean[k][pick]
    adv_maps: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    gallery: dict[str, list[np.ndarray]] = {"adv_pred": [], "adv_conf": [], "adv_images": [], "perturbation": [],
                                            "linf": []}  # fmt: skip
    for row in rows:
        if not _perturbs(row):
            row["maps"] = None  # its images are the clean ones
            continue
        f = ShardReader(row["shards"], verify=False).read_range(0, n, ["x_adv", "adv_pred", "adv_probs", "linf"])
        xa = torch.from_numpy(f["x_adv"].astype(np.float32)).to(dev)
        t = target if settings.target == "label" else torch.from_numpy(f["adv_pred"]).to(dev)
        adv = M.model_maps(model, xa, t)
        row["maps"] = {}
        for k in kinds:
            up = M.upsample(adv[k], size)
            row["maps"][k] = {"adversarial": M.score(up, masks, settings.grid), "shift": M.compare(clean_up[k], up)}
            adv_maps[k].append(adv[k][pick])
        xa_pick = xa[torch.from_numpy(pick).to(dev)]
        gallery["adv_pred"].append(f["adv_pred"][pick])
        gallery["adv_conf"].append(_confidence(f["adv_probs"][pick], f["adv_pred"][pick]))
        gallery["adv_images"].append(_to_uint8(_shrink(xa_pick)))
        # The perturbation the model saw, shrunk like the images (signed; the gallery amplifies it).
        gallery["perturbation"].append(_shrink(xa_pick - x_pick).permute(0, 2, 3, 1).numpy().astype(np.float16))
        gallery["linf"].append(f["linf"][pick].astype(np.float32))
    for k in kinds:
        if adv_maps[k]:
            arrays[f"{k}_adv"] = np.stack(adv_maps[k])
    for key, parts in gallery.items():
        if parts:
            arrays[key] = np.stack(parts)
    return summary, arrays


def _confidence(probs: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The probability the model gave its predicted class, per image."""
    return np.asarray(probs, dtype=np.float32)[np.arange(len(pred)), np.asarray(pred, dtype=np.int64)]


def evaluate_model(
    run: str, shard_sets: tuple[str, ...], output: str, *, dataset: str, cache: str, split: str,
    image_size: int | None, settings: ReportSettings, device: str = "auto", job: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write one model's evaluation (``output`` JSON, plus ``.maps.npz`` beside it) and return it.

    ``job`` (the sweep job's key) is recorded, so a rerun with other settings redoes it."""
    from medhpc.attacks.robustness import masking_warnings

    rows = attack_rows(shard_sets, settings)
    warnings = masking_warnings(rows)
    for w in warnings:
        log.warning("%s: gradient-masking sign (%s): %s", run, w["kind"], w["message"])
    result: dict[str, Any] = {"format": EVAL_FORMAT, "job": job, "run": run, "dataset": dataset,
                              "medhpc_version": __version__, "n": rows[0]["n"] if rows else 0, "attacks": rows,
                              "warnings": warnings, "maps": None}  # fmt: skip
    if settings.maps and rows:
        summary, arrays = map_results(run, rows, cache, split, image_size, settings, device)
        npz = Path(output).with_suffix(".maps.npz")
        buf = io.BytesIO()
        np.savez_compressed(buf, **cast(dict[str, Any], arrays))  # numpy's stub reads ** as allow_pickle
        atomic.write_with(npz, lambda fh: fh.write(buf.getvalue()))
        result["maps"] = {**summary, "file": npz.name}
    atomic.write_json(result, output)
    return result
