"""Frozen-feature training: a frozen backbone's pooled features, computed once and reused by
every head trained on it.

The paper grid trains 40 VIB heads on 4 frozen backbones, and each epoch of each used to run the
whole backbone again over the same images. A head whose spec is ``pooled`` (linear, VIB) sees
the feature map only through its global average, so that average, computed once per image,
stands in for the map exactly: the head pools a 1 × 1 map to the same vector. The backbone is
frozen and in eval mode, and training has no augmentation, so nothing else changes; the loader's
order, the head's noise draws and dropout come from the same streams (a test holds the weights
equal to float tolerance).

The features of the train and val splits go to one HDF5 file under ``<out>/features/``, named by
a hash of what determines them (the backbone's weights, the cache file, image size,
normalisation, precision, memory format and device type), written atomically and checked on
every open (format, key, split sizes, finite values); a file that does not check out is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from medhpc import atomic
from medhpc.data.cache import CacheLoader, cache_info, prepare_batch
from medhpc.models import Classifier
from medhpc.models.classifier import TrainOutput
from medhpc.train.config import TrainConfig

log = logging.getLogger(__name__)

FORMAT = 1
SPLITS = ("train", "val")


def eligible(cfg: TrainConfig) -> bool:
    """Whether this run trains a pooled head on a frozen backbone with feature caching on, on
    clean images (adversarial training crafts its examples through the backbone, image by image)."""
    return bool(
        cfg.feature_cache and cfg.model.freeze_backbone and cfg.model.head_spec.pooled and cfg.adversarial is None
    )


def feature_key(cfg: TrainConfig, model: Classifier, device: torch.device, amp: torch.dtype | None,
                channels_last: bool) -> str:  # fmt: skip
    """A hash of everything the features depend on."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in model.backbone.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    cache = Path(cfg.data.cache).resolve()
    st = cache.stat()
    parts = [FORMAT, cfg.model.arch, str(cache), st.st_size, st.st_mtime_ns, cfg.data.image_size,
             cfg.model.normalization, str(amp), channels_last, device.type]  # fmt: skip
    h.update(repr(parts).encode())
    return h.hexdigest()


def features_path(cfg: TrainConfig, key: str) -> Path:
    return Path(cfg.out) / "features" / f"{cfg.model.arch}-{key[:16]}.h5"


def _problem(path: Path, key: str, counts: dict[str, int]) -> str | None:
    """Why the file at ``path`` cannot be used (None: it can)."""
    try:
        with h5py.File(path, "r") as h5:
            if int(h5.attrs.get("format", -1)) != FORMAT or h5.attrs.get("key") != key:
                return "written for other settings"
            for split in SPLITS:
                if split not in h5 or h5[split]["features"].shape[0] != counts[split]:
                    return f"split {split!r} does not hold {counts[split]} images"
                if not np.isfinite(h5[split]["features"][()]).all():
                    return f"split {split!r} holds non-finite features"
    except (OSError, KeyError, ValueError) as exc:
        return f"unreadable ({exc})"
    return None


@torch.no_grad()
def _pooled(model: Classifier, cfg: TrainConfig, split: str, device: torch.device, amp: torch.dtype | None,
            channels_last: bool) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Pooled features (N, C) and labels (N,) of one split, in index order, pooled as the heads
    pool (inside the same autocast)."""
    was = model.training
    model.eval()
    feats, labels = [], []
    with CacheLoader(cfg.data.cache, split, batch_size=cfg.eval_batch_size, pin_memory=device.type == "cuda") as loader:
        for batch in tqdm(loader, desc=f"features {split}", leave=False, disable=True):
            x = prepare_batch(batch[0], device, cfg.data.image_size, channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                t = model.features(x)[0]
                h = torch.flatten(F.adaptive_avg_pool2d(t, 1), 1)
            feats.append(h.float().cpu().numpy())
            labels.append(batch[1].numpy())
    model.train(was)
    return np.concatenate(feats), np.concatenate(labels)


class Features:
    """The pooled features of the train and val splits, in memory (they are small: N × C floats)."""

    def __init__(self, path: Path, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.path = path
        self.data = data

    def batches(
        self, split: str, indices: list[np.ndarray], device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(map (B, C, 1, 1), labels)`` for each index array, as the heads take a feature map."""
        feats, labels = self.data[split]
        for idx in indices:
            h = torch.from_numpy(feats[idx]).to(device, non_blocking=True)
            yield h.view(*h.shape, 1, 1), torch.from_numpy(labels[idx]).to(device, non_blocking=True)


def prepare(cfg: TrainConfig, model: Classifier, device: torch.device, amp: torch.dtype | None,
            channels_last: bool) -> Features:  # fmt: skip
    """The run's features: read if a file for this backbone checks out, else computed and written."""
    key = feature_key(cfg, model, device, amp, channels_last)
    path = features_path(cfg, key)
    stored = cache_info(cfg.data.cache)["counts"]
    counts = {s: stored[s] for s in SPLITS}
    problem = _problem(path, key, counts) if path.is_file() else "absent"
    if problem is not None:
        if path.exists():
            log.warning("%s: %s; computing the features again", path, problem)
        data = {s: _pooled(model, cfg, s, device, amp, channels_last) for s in SPLITS}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
            h5.attrs.update({"format": FORMAT, "key": key, "arch": cfg.model.arch, "cache": str(cfg.data.cache)})
            for split, (feats, labels) in data.items():
                g = h5.create_group(split)
                g.create_dataset("features", data=feats)
                g.create_dataset("labels", data=labels)
        log.info("%s: pooled features of %s written", path, ", ".join(f"{counts[s]} {s}" for s in SPLITS))
    else:
        with h5py.File(path, "r") as h5:
            data = {s: (h5[s]["features"][()], h5[s]["labels"][()]) for s in SPLITS}
        log.info("%s: reusing the pooled features", path)
    return Features(path, data)


def forward_train(model: Classifier, t: torch.Tensor) -> TrainOutput:
    """The model's training output from a pooled feature map (what ``forward_train`` gives)."""
    out = model.head(t)
    return TrainOutput(out.logits, None, out.kl)


@torch.no_grad()
def predict(model: Classifier, feats: Features, split: str, device: torch.device, *, batch_size: int,
            autocast_dtype: torch.dtype | None, seed: int) -> dict[str, Any]:  # fmt: skip
    """:func:`medhpc.train.evaluate.predict` on the stored features: eval mode, the noise from a
    generator seeded with ``seed`` in a forked RNG, batches in index order."""
    was = model.training
    model.eval()
    n = feats.data[split][0].shape[0]
    indices = [np.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]
    logits, kls, labels = [], [], []
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for t, y in feats.batches(split, indices, device):
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                out = model.head(t)
            logits.append(out.logits.float().cpu())
            if out.kl is not None:
                kls.append(out.kl.float().cpu())
            labels.append(y.cpu())
    model.train(was)
    result: dict[str, Any] = {"labels": torch.cat(labels).numpy(), "logits": torch.cat(logits).numpy()}
    if kls:
        result["kl"] = torch.cat(kls).numpy()
    return result
