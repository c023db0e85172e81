"""Clean evaluation: run a model over a cache split and compute Appendix A's metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from medhpc.data.cache import CacheLoader, prepare_batch
from medhpc.metrics import binary_metrics

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: CacheLoader,
    device: torch.device,
    *,
    image_size: int | None = None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    progress: bool | None = None,
    perturb: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Labels (N,), logits (N, C) and the VIB head's KL (N,) or None over one split.

    The model runs in eval mode (a VIB model averages its evaluation samples). Its noise
    comes from a generator seeded with ``seed`` inside a forked RNG, so evaluating neither
    depends on nor disturbs the training run's random stream. ``perturb(model, x, y, i)``
    replaces batch ``i``'s images before the forward pass (an attack: the robust validation
    of adversarial training, :func:`medhpc.train.adversarial.validation_perturb`), under the
    same autocast; it makes its own gradients.
    """
    was_training = model.training
    model.eval()
    labels, logits, kls = [], [], []
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i, batch in enumerate(tqdm(
            loader, desc=f"eval {loader.dataset.split}", leave=False, disable=None if progress is None else not progress
        )):  # fmt: skip
            images, y = batch[0], batch[1]
            x = prepare_batch(images, device, image_size, channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                if perturb is not None:
                    x = perturb(model, x, y.to(device, non_blocking=True), i)
                forward_train = getattr(model, "forward_train", None)
                out = forward_train(x) if forward_train is not None else None
                z = out.logits if out is not None else model(x)
            logits.append(z.float())
            if out is not None and out.kl is not None:
                kls.append(out.kl.float())
            labels.append(y)
    model.train(was_training)
    result = {
        "labels": torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
        "logits": torch.cat(logits).cpu().numpy() if logits else np.zeros((0, 2), np.float32),
    }
    if kls:
        result["kl"] = torch.cat(kls).cpu().numpy()
    return result


def metrics_of(
    pred: dict[str, np.ndarray], class_weights: torch.Tensor | None = None, beta: float = 0.0
) -> dict[str, Any]:
    """Appendix A metrics plus the loss (cross-entropy, + beta * mean KL for a VIB model)."""
    logits = torch.from_numpy(pred["logits"]).double()
    labels = torch.from_numpy(pred["labels"])
    probs = torch.softmax(logits, dim=1).numpy()
    out = binary_metrics(pred["labels"], probs)
    w = class_weights.double().cpu() if class_weights is not None else None
    loss = F.cross_entropy(logits, labels, weight=w).item() if labels.numel() else float("nan")
    if "kl" in pred and pred["kl"].size:
        kl = float(pred["kl"].mean())
        out["kl"] = kl
        loss += beta * kl
    out["loss"] = loss
    return out


def write_predictions(pred: dict[str, np.ndarray], path: Path) -> None:
    """Per-image labels and logits of a split (npz), so reports can recompute any metric."""
    from medhpc import atomic

    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **cast(dict[str, Any], pred))  # numpy's stub reads ** as allow_pickle
