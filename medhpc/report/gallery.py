"""The adversarial gallery: for a few images per attack, what the model saw and where it looked.

Each panel is one image under one attack: the clean image, the adversarial one, the
perturbation amplified until it is visible, the Grad-CAM map (and, for an attentive head, the
attention map) clean and under attack, and the prediction with its confidence before and
after. Everything comes from the evaluation's maps file (``NAME.maps.npz``, written by
:func:`medhpc.report.analyse.map_results`); nothing is recomputed from a model.

Tiles are PNG files under ``report/gallery/MODEL/``: a page that opens from the file system or
a cluster's web share needs no server to show them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medhpc import atomic
from medhpc.report.results import ModelResult, ReportError

#: Keys a maps file must hold for the gallery (older evaluations lack the adversarial images).
GALLERY_KEYS = ("images", "attacks", "labels", "clean_pred", "clean_conf", "adv_pred", "adv_conf", "adv_images",
                "perturbation", "linf")  # fmt: skip
#: Map tiles are blended over the image with this weight.
OVERLAY = 0.45


@dataclass(frozen=True)
class Tile:
    caption: str
    src: str  # relative to the report folder


@dataclass(frozen=True)
class Panel:
    """One image under one attack."""

    attack: str
    index: int  # the image's position in the test split
    label: str
    clean_pred: str
    clean_conf: float
    adv_pred: str
    adv_conf: float
    linf: float
    amplify: float  # how much the perturbation tile is magnified
    tiles: list[Tile] = field(default_factory=list)

    @property
    def fooled(self) -> bool:
        """The prediction changed under attack."""
        return self.clean_pred != self.adv_pred


@dataclass(frozen=True)
class Gallery:
    model: str  # run folder name (the anchor)
    label: str
    attacks: list[str]
    panels: list[Panel]

    def by_attack(self, attack: str) -> list[Panel]:
        return [p for p in self.panels if p.attack == attack]


def _png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image))
    atomic.write_with(path, lambda fh: img.save(fh, format="PNG"))


def _overlay(image: np.ndarray, scaled: np.ndarray) -> np.ndarray:
    """A [0, 1] map (H, W) in the jet colour map blended over an RGB uint8 image."""
    from matplotlib import colormaps

    heat = colormaps["jet"](scaled)[..., :3]
    blend = (1 - OVERLAY) * image.astype(np.float64) / 255 + OVERLAY * heat
    return (np.clip(blend, 0, 1) * 255).round().astype(np.uint8)


def _amplified(delta: np.ndarray) -> tuple[np.ndarray, float]:
    """A signed perturbation (H, W, C) as an image: grey is no change, scaled so its largest
    component reaches black or white; returns the image and the factor."""
    d = delta.astype(np.float64)
    peak = float(np.abs(d).max())
    gain = 0.5 / peak if peak > 0 else 1.0
    return (np.clip(0.5 + gain * d, 0, 1) * 255).round().astype(np.uint8), 2 * gain


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


def write_gallery(m: ModelResult, out: Path) -> Gallery | None:
    """Write one model's gallery tiles under ``out/gallery/`` and describe its panels (None
    when the model was evaluated without maps or no attack perturbs)."""
    from medhpc.report.maps import upsample

    mp = m.evaluation.get("maps")
    if not mp:
        return None
    npz = m.eval_path.parent / mp["file"]
    try:
        with np.load(npz) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise ReportError(
            f"{npz}: the maps of {m.run} are missing (delete {m.eval_path} and rerun the sweep)"
        ) from None
    if arrays["images"].shape[0] == 0 or len(arrays["attacks"]) == 0:
        return None
    missing = [k for k in GALLERY_KEYS if k not in arrays]
    if missing:
        raise ReportError(f"{npz}: no gallery data ({', '.join(missing)} missing); it was written by an older "
                          f"medhpc: delete {m.eval_path} and rerun the sweep")  # fmt: skip
    classes = list(m.metrics.get("classes") or [str(c) for c in range(2)])
    kinds = [k for k in mp["kinds"] if f"{k}_clean" in arrays]
    size = arrays["images"].shape[1]
    folder = out / "gallery" / _slug(m.name)
    clean_scaled = {k: upsample(arrays[f"{k}_clean"], size) for k in kinds}
    adv_scaled = {k: [upsample(per_attack, size) for per_attack in arrays[f"{k}_adv"]] for k in kinds}
    panels: list[Panel] = []
    attacks = [str(a) for a in arrays["attacks"]]

    def tile(caption: str, image: np.ndarray, stem: str) -> Tile:
        path = folder / f"{stem}.png"
        _png(image, path)
        return Tile(caption, Path(os.path.relpath(path, out)).as_posix())

    for i in range(arrays["images"].shape[0]):
        idx = int(arrays["index"][i])
        base = [tile("clean", arrays["images"][i], f"{idx}-clean")]
        for k in kinds:
            base.append(tile(f"{_kind_name(k)} clean", _overlay(arrays["images"][i], clean_scaled[k][i]),
                             f"{idx}-{k}-clean"))  # fmt: skip
        for a, attack in enumerate(attacks):
            stem = f"{idx}-{_slug(attack)}"
            amp_image, gain = _amplified(arrays["perturbation"][a, i])
            tiles = [base[0], tile("adversarial", arrays["adv_images"][a, i], f"{stem}-adv"),
                     tile(f"perturbation ×{gain:.0f}", amp_image, f"{stem}-perturbation")]  # fmt: skip
            for j, k in enumerate(kinds):
                overlay = _overlay(arrays["adv_images"][a, i], adv_scaled[k][a][i])
                tiles += [base[1 + j], tile(f"{_kind_name(k)} adversarial", overlay, f"{stem}-{k}")]
            panels.append(Panel(
                attack=attack, index=idx, label=classes[int(arrays["labels"][i])],
                clean_pred=classes[int(arrays["clean_pred"][i])], clean_conf=float(arrays["clean_conf"][i]),
                adv_pred=classes[int(arrays["adv_pred"][a, i])], adv_conf=float(arrays["adv_conf"][a, i]),
                linf=float(arrays["linf"][a, i]), amplify=gain, tiles=tiles,
            ))  # fmt: skip
    return Gallery(model=m.name, label=m.label, attacks=attacks, panels=panels)


def _kind_name(kind: str) -> str:
    return "Grad-CAM" if kind == "gradcam" else kind
