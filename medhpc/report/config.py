"""What a sweep's report measures beyond accuracy: uncertainty operating points and maps.

Part of the sweep config (``report:``); the fields that change a model's evaluation are part
of its evaluate job's hash, so changing them re-evaluates and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medhpc.config import bad


@dataclass(frozen=True)
class ReportSettings:
    """``maps``: compute Grad-CAM (and attention) maps of the first ``map_images`` attacked
    images (all when null), clean and under every attack; ``figure_images`` of them (those
    with a lesion first) are drawn. ``grid``: cells per side for the top-cell IoU. ``target``:
    the class each image's Grad-CAM explains, its true ``label`` or the model's prediction
    (``pred``: the clean prediction on the clean image, the adversarial one under attack).
    ``coverages``: selective-prediction operating points; ``fpr``: the detection operating
    point (TPR at this false-positive rate)."""

    maps: bool = True
    map_images: int | None = 64
    figure_images: int = 4
    grid: int = 7
    target: Literal["label", "pred"] = "label"
    coverages: tuple[float, ...] = (0.8, 0.9)
    fpr: float = 0.05

    def _check(self) -> None:
        if self.map_images is not None and self.map_images < 1:
            raise bad("map_images", f"must be >= 1 or null, got {self.map_images}")
        if not 0 <= self.figure_images <= 32:
            raise bad("figure_images", f"must be in 0..32, got {self.figure_images}")
        if not 1 <= self.grid <= 64:
            raise bad("grid", f"must be in 1..64, got {self.grid}")
        if not self.coverages or any(not 0 < c <= 1 for c in self.coverages):
            raise bad("coverages", f"must list fractions in (0, 1], got {list(self.coverages)}")
        if not 0 < self.fpr < 1:
            raise bad("fpr", f"must be in (0, 1), got {self.fpr}")
