"""A finished training run's kept model under a list of attacks (``python -m medhpc.attacks CONFIG``).

The config names a finished training run and the attacks (or ``preset: paper``, the first
seed's Appendix B/C rows). The result, per attack accuracy, success rate, mean L2 / L∞ and
gradient-masking warnings, is written as ``robustness-<config hash>.json`` in the run's folder
(or ``out``); a rerun with the same config finds it and does nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from medhpc import __version__, atomic
from medhpc.attacks.config import AttackConfig
from medhpc.attacks.detector import Detector, calibrate
from medhpc.attacks.presets import PresetName, preset_attacks
from medhpc.attacks.robustness import evaluate_robustness
from medhpc.config import bad, config_hash, load, nohash, to_dict
from medhpc.data.cache import CacheLoader, prepare_batch
from medhpc.device import resolve_device
from medhpc.models.checkpoint import load_model, resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RobustnessConfig:
    """Which model, which images, which attacks.

    ``run``: a training run folder (its kept model ``best.pt``) or a checkpoint file.
    ``attacks`` lists attack configs; ``preset`` (a name of :data:`medhpc.attacks.presets.PRESETS`
    or a list of them: ``paper``, ``strong``, ``adaptive``) adds its rows first. An attack on an
    uncertainty detector (``adaptive``) gets its detector fitted on the cache's ``val`` split.
    ``label_mode``, when given, sets the label mode of every attack (``pred``: the model's own
    predictions, as the scripts did; ``true``: the true labels); left out, each listed attack
    keeps its own (default ``true``) and the preset's rows use ``pred``. ``cache``
    defaults to the run's own cache, ``split`` to its test split; ``limit`` takes the first
    images only (smoke runs).
    """

    run: str
    attacks: tuple[AttackConfig, ...] = ()
    preset: PresetName | tuple[PresetName, ...] | None = None
    label_mode: Literal["true", "pred"] | None = None
    cache: str | None = None
    split: Literal["train", "val", "test"] = "test"
    limit: int | None = None
    seed: int = 0
    batch_size: int = nohash(32)
    device: str = nohash("auto")
    out: str | None = nohash(None)

    def _check(self) -> None:
        if not self.attacks and self.preset is None:
            raise bad("attacks", "list at least one attack, or set a preset (paper, strong, adaptive)")
        if self.limit is not None and self.limit < 1:
            raise bad("limit", f"must be >= 1 or null, got {self.limit}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**63:
            raise bad("seed", f"must be in [0, 2**63), got {self.seed}")
        if self.label_mode == "pred":
            targeted = [i for i, a in enumerate(self.attacks) if a.targeted]
            if targeted:
                raise bad(f"attacks[{targeted[0]}].targeted", "a targeted attack needs label_mode 'true'")

    def attack_list(self) -> list[AttackConfig]:
        rows = preset_attacks(self.preset, self.label_mode or "pred")
        rows += list(self.attacks)
        if self.label_mode is not None:
            rows = [dataclasses.replace(a, label_mode=self.label_mode) for a in rows]
        return rows


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> RobustnessConfig:
    return load(RobustnessConfig, path, overrides)


def output_path(cfg: RobustnessConfig) -> Path:
    folder = Path(cfg.out) if cfg.out else resolve(cfg.run).parent
    return folder / f"robustness-{config_hash(cfg)}.json"


def _batches(
    loader: CacheLoader, device: torch.device, image_size: int | None, limit: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    left = limit
    for batch in loader:
        images, labels = batch[0], batch[1]
        if left is not None:
            images, labels = images[:left], labels[:left]
            left -= labels.shape[0]
        yield prepare_batch(images, device, image_size, False), labels.to(device)
        if left is not None and left <= 0:
            return


def evaluate_run(cfg: RobustnessConfig, progress: bool | None = None) -> Path:
    """Run the attacks on the run's kept model; write and return the result file."""
    out = output_path(cfg)
    if out.is_file():
        log.info("%s exists: finished earlier, skipping", out)
        return out
    device = resolve_device(cfg.device)
    model, train_cfg = load_model(cfg.run, device)
    cache = cfg.cache or train_cfg["data"]["cache"]
    image_size = train_cfg["data"].get("image_size")
    attacks = cfg.attack_list()
    detectors: dict[int, Detector] = {}
    for j, a in enumerate(attacks):
        if a.spec.calibrated:
            assert a.score is not None and a.fpr is not None and a.target_quantile is not None
            if cfg.split == "val":
                log.warning("%s: the detector is fitted on the val split it is then attacked on", a.name)
            with CacheLoader(cache, "val", batch_size=cfg.batch_size) as val:
                detectors[j] = calibrate(
                    model, _batches(val, device, image_size, None), score=a.score, fpr=a.fpr,
                    target_quantile=a.target_quantile, seed=cfg.seed,
                )  # fmt: skip
    with CacheLoader(cache, cfg.split, batch_size=cfg.batch_size) as loader:
        result = evaluate_robustness(
            model, _batches(loader, device, image_size, cfg.limit), attacks,
            seed=cfg.seed, device=device, progress=progress is not False, detectors=detectors,
        )  # fmt: skip
    result = {
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "medhpc_version": __version__,
        "run": str(resolve(cfg.run)),
        "model": train_cfg["model"],
        "cache": str(cache),
        "split": cfg.split,
        "device": str(device),
        **result,
    }
    atomic.write_json(result, out)
    return out
