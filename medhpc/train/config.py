"""The training config: model, data, optimiser, schedule, and the papers' recipes as presets.

``preset: base`` is Häkkinen & Raj's base recipe (SGD lr 1e-4, momentum 0.9, batch 32, up
to 200 epochs); ``preset: vib`` their VIB recipe (frozen backbone, Adam lr 1e-3 with betas
(0.5, 0.999), ×0.97 every 2 epochs, 20 epochs, batch 32). A preset fills keys the file leaves
out; keys in the file win.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medhpc.config import ConfigError, bad, from_dict, hashed_when_set, nohash, read_mapping
from medhpc.models.config import ModelConfig
from medhpc.train.adversarial import AdversarialConfig

PRESETS: dict[str, dict[str, Any]] = {
    "base": {
        "optim": {"name": "sgd", "lr": 1e-4, "momentum": 0.9},
        "batch_size": 32,
        "epochs": 200,
    },
    "vib": {
        "model": {"head": "vib", "freeze_backbone": True},
        "optim": {"name": "adam", "lr": 1e-3, "betas": [0.5, 0.999], "decay_gamma": 0.97, "decay_every": 2},
        "batch_size": 32,
        "epochs": 20,
    },
}


@dataclass(frozen=True)
class DataConfig:
    """A cache written by ``python -m medhpc.data prepare``; ``image_size`` resizes batches on
    the device when it differs from the cache's (one 299 px cache can serve both backbones)."""

    cache: str
    image_size: int | None = None

    def _check(self) -> None:
        if not self.cache:
            raise bad("cache", "must name a prepared HDF5 cache file")
        if self.image_size is not None and self.image_size < 1:
            raise bad("image_size", f"must be positive, got {self.image_size}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and step schedule: the learning rate is multiplied by ``decay_gamma`` every
    ``decay_every`` epochs (1.0 keeps it constant)."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 1e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    decay_gamma: float = 1.0
    decay_every: int = 1

    def _check(self) -> None:
        if not self.lr > 0.0:
            raise bad("lr", f"must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise bad("momentum", f"must be in [0, 1), got {self.momentum}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad("betas", f"must be in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0.0:
            raise bad("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.decay_gamma <= 1.0:
            raise bad("decay_gamma", f"must be in (0, 1], got {self.decay_gamma}")
        if self.decay_every < 1:
            raise bad("decay_every", f"must be >= 1, got {self.decay_every}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Fields after ``seed`` say where and how fast it runs, not what it
    computes, and are left out of the config hash that names the run's folder.

    ``loss_weighting: weighted`` is the class-weighted cross-entropy w_c = N / N_c (the
    tables' *). ``patience`` stops when the validation loss has not improved (fallen by more
    than ``min_delta``) for that many epochs (None: never). ``init_from`` copies the backbone
    of a finished run (its folder or checkpoint), as the VIB recipe trains a head on a
    trained, frozen backbone. ``adversarial`` trains on adversarial examples (PGD-AT, TRADES,
    fast FGSM-AT: :class:`~medhpc.train.adversarial.AdversarialConfig`) and keeps the model
    with the lowest robust validation loss; left out (null) it is plain training, and the
    config's hash is what it was before the section existed.
    ``precision: auto`` is bf16 autocast on CUDA and fp32 on the CPU. ``tf32`` lets cuDNN
    convolutions and cuBLAS matmuls run fp32 work in TF32 on Ampere and later GPUs; it is off
    by default so that ``precision: fp32`` means IEEE fp32 (torch's own default is on for
    cuDNN, off for cuBLAS), and ignored on the CPU. ``deterministic`` makes an op without a
    deterministic CUDA implementation an error, turns cuDNN autotuning off and sets
    ``CUBLAS_WORKSPACE_CONFIG`` (:mod:`medhpc.train.runtime`). A run resumes only on the
    device type, precision and tf32 it started with. ``feature_cache`` trains a pooled head
    (linear, VIB) on a frozen backbone from its pooled features, computed once and shared by
    every such run on that backbone (:mod:`medhpc.train.features`; equal to float tolerance).
    """

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    preset: Literal["base", "vib"] | None = None
    epochs: int = 200
    batch_size: int = 32
    loss_weighting: Literal["none", "weighted"] = "none"
    aux_weight: float = 0.4
    patience: int | None = None
    min_delta: float = 0.0
    init_from: str | None = None
    seed: int = 0
    adversarial: AdversarialConfig | None = hashed_when_set()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = nohash("auto")
    channels_last: Literal["auto", "on", "off"] = nohash("auto")
    deterministic: bool = nohash(False)
    tf32: bool = nohash(False)
    device: str = nohash("auto")
    eval_batch_size: int = nohash(64)
    feature_cache: bool = nohash(True)
    num_workers: int = nohash(0)
    out: str = nohash("runs")

    def _check(self) -> None:
        if self.epochs < 1:
            raise bad("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise bad("eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        if self.aux_weight < 0.0:
            raise bad("aux_weight", f"must be >= 0, got {self.aux_weight}")
        if self.patience is not None and self.patience < 1:
            raise bad("patience", f"must be >= 1 or null, got {self.patience}")
        if not self.min_delta >= 0.0:
            raise bad("min_delta", f"must be >= 0, got {self.min_delta}")
        if not 0 <= self.seed < 2**63:
            raise bad("seed", f"must be in [0, 2**63), got {self.seed}")
        if self.num_workers < 0:
            raise bad("num_workers", f"must be >= 0, got {self.num_workers}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise bad("device", f"must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def from_mapping(data: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    """Apply the preset (if any), then build and validate a :class:`TrainConfig`."""
    preset = data.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"{source}: preset: must be one of {', '.join(map(repr, PRESETS))}, got {preset!r}")
        data = _merge(PRESETS[preset], data)
    return from_dict(TrainConfig, data, source=source)


def load_train_config(path: Path | str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML/TOML training config; ``overrides`` are dotted keys (``optim.lr``)."""
    return from_mapping(read_mapping(path, overrides), source=str(path))
