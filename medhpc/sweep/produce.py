"""Make a shard: run one attack over a slice of a split and record everything the report needs.

:func:`attack_to_shard` is the attack job's core (:class:`medhpc.sweep.jobs.AttackJob`):
batches in, one verified shard out. It is device-agnostic (the model's device, or ``device``),
batched, and streams each batch to the shard's temporary file (:class:`medhpc.store.ShardWriter`),
so memory holds one batch, not the shard. :func:`cache_batches` feeds it from a prepared cache
with the same preprocessing as training and evaluation. Here, in the job layer, attacks, models
and data meet the store, which knows none of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medhpc.attacks.common import derive_seed
from medhpc.attacks.config import AttackConfig, run_attack
from medhpc.attacks.detector import DEFAULT_SAMPLES, Detector, default_samples
from medhpc.attacks.detector import deployed_probs as _probs
from medhpc.config import ConfigError, from_dict
from medhpc.models.noise import is_stochastic
from medhpc.store import ShardError, ShardInfo, ShardMeta, ShardWriter

log = logging.getLogger(__name__)


def _unpack(batch: Any, b: int) -> tuple[torch.Tensor, torch.Tensor, Sequence[str] | None]:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ShardError(f"batch {b}: expected (images, labels) or (images, labels, ids), got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ShardError(f"batch {b}: images and labels must be tensors")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ShardError(f"batch {b}: {x.shape[0]} images but labels of shape {tuple(y.shape)}")
    ids = list(batch[2]) if len(batch) == 3 else None
    if ids is not None and len(ids) != x.shape[0]:
        raise ShardError(f"batch {b}: {x.shape[0]} images but {len(ids)} ids")
    return x, y, ids


def attack_to_shard(
    path: Path | str,
    model: nn.Module,
    batches: Iterable[Any],
    attack: AttackConfig | Mapping[str, Any],
    *,
    start: int,
    split: str,
    seed: int = 0,
    model_hash: str | None = None,
    model_config: Any = None,
    run: str = "",
    dataset: str = "",
    set_size: int | None = None,
    samples: int | None = None,
    ids: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    image_dtype: str = "float32",
    compression: int = 1,
    config_hash: str | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    detector: Detector | None = None,
) -> ShardInfo:
    """Attack every batch, compute clean and adversarial probabilities, write one shard.

    Parameters
    ----------
    path : the shard to write (see :class:`~medhpc.store.writer.ShardWriter`).
    model : the classifier in eval mode (images in the attack's clip range).
    batches : ``(x, y)`` or ``(x, y, ids)``: images (B, 3, H, W) and true labels, in index
        order from split index ``start`` on (:func:`cache_batches` makes them).
    attack : the attack; a targeted one attacks the class after the true one,
        ``(y + 1) mod C``, as :func:`medhpc.attacks.robustness.evaluate_robustness` does.
    start, split : where the batches come from.
    seed : the batch starting at split index ``i`` is attacked under ``derive_seed(seed, i)``
        and its probabilities drawn under ``derive_seed(seed, i, 1)`` (clean) and
        ``derive_seed(seed, i, 2)`` (adversarial): a shard's content depends on the images,
        seed and batch boundaries, not on which process or device wrote it first.
    model_hash, model_config, run, dataset, set_size, config_hash, meta : recorded in the
        attributes (:class:`~medhpc.store.writer.ShardMeta`); ``model_config`` defaults to
        ``model.cfg`` for a :class:`medhpc.models.Classifier`.
    samples : draws S to store per image for a stochastic model (default: its
        ``eval_samples``); ignored for a deterministic one.
    ids : the slice's image ids, when the batches do not carry them.
    device : where to run (default: the model's device).
    image_dtype, compression : see :class:`~medhpc.store.writer.ShardWriter`.
    progress : a tqdm bar over batches (None: only on a terminal).
    detector : for an attack on an uncertainty detector (its spec is ``calibrated``), the
        detector fitted on clean validation images (:func:`medhpc.attacks.detector.calibrate`);
        recorded in the shard's ``meta`` as ``detector``, where the report finds it.

    Returns
    -------
    The written shard's :class:`~medhpc.store.reader.ShardInfo`.
    """
    if not isinstance(attack, AttackConfig):
        try:
            attack = from_dict(AttackConfig, attack, source="attack")
        except ConfigError as exc:
            raise ShardError(str(exc)) from None
    if model_config is None:
        model_config = getattr(model, "cfg", None)
    stochastic = is_stochastic(model)
    if stochastic:
        if not callable(getattr(model, "sample_logits", None)):
            raise ShardError(f"{type(model).__name__} is stochastic but has no sample_logits(x, samples)")
        s = default_samples(model) if samples is None else samples
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ShardError(f"samples must be an integer >= 1, got {samples!r}")
    else:
        if samples:
            log.info("model is deterministic: samples=%s ignored, no per-draw fields stored", samples)
        s = 0
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if model.training:
        log.warning("attack_to_shard: the model is in training mode; call model.eval() first")
    if attack.spec.calibrated:
        if not isinstance(detector, Detector):
            raise ShardError(f"{attack.name} attacks an uncertainty detector: give the fitted detector as detector=")
        meta = {**dict(meta or {}), "detector": detector.to_dict()}
    elif detector is not None:
        raise ShardError(f"{attack.name} attacks no detector; detector= is only for calibrated attacks")
    shard_meta = ShardMeta(
        attack=attack, split=split, start=start, model_hash=model_hash, model_config=model_config, run=str(run),
        dataset=str(dataset), set_size=set_size, seed=seed, samples=s, config_hash=config_hash, meta=meta,
    )  # fmt: skip
    bar = tqdm(batches, desc=f"attack {attack.name}", unit="batch", disable=None if progress is None else not progress)
    total = _length(batches)
    began = time.monotonic()
    with ShardWriter(path, shard_meta, image_dtype=image_dtype, compression=compression) as writer:
        for b, batch in enumerate(bar):
            x, y, batch_ids = _unpack(batch, b)
            i0 = start + writer.n
            n = x.shape[0]
            if batch_ids is None:
                if ids is None:
                    raise ShardError(f"batch {b}: no ids; give them per batch (x, y, ids) or as ids=")
                batch_ids = list(ids[writer.n : writer.n + n])
                if len(batch_ids) != n:
                    raise ShardError(f"ids holds {len(ids)} ids, fewer than the batches' images")
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True).long()
            clean, clean_draws = _probs(model, x, derive_seed(seed, i0, 1), s)
            labels = (y + 1) % clean.shape[-1] if attack.targeted else y
            res = run_attack(model, x, labels, attack, seed=derive_seed(seed, i0), detector=detector)
            adv, adv_draws = _probs(model, res.x_adv, derive_seed(seed, i0, 2), s)
            arrays: dict[str, Any] = {
                "x_adv": res.x_adv, "index": np.arange(i0, i0 + n, dtype=np.int64), "ids": batch_ids,
                "labels": y, "attack_labels": res.labels, "clean_pred": clean.argmax(-1), "adv_pred": res.pred,
                "clean_probs": clean, "adv_probs": adv, "l2": res.l2.float(), "linf": res.linf.float(),
                "success": res.success, "const": None if res.const is None else res.const.float(),
                "queries": res.queries, "min_norm": None if res.min_norm is None else res.min_norm.float(),
                "broken_by": res.broken_by,
            }  # fmt: skip
            if s:
                arrays["clean_sample_probs"] = clean_draws
                arrays["adv_sample_probs"] = adv_draws
            writer.append({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in arrays.items()})
            if bar.disable:  # no bar (a SLURM log, CI): one line per batch instead
                log.info("attack %s: batch %d%s done, %d images in %.1f s", attack.name, b + 1,
                         f"/{total}" if total else "", writer.n, time.monotonic() - began)  # fmt: skip
    assert writer.info is not None
    return writer.info


def _length(batches: Iterable[Any]) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def cache_batches(
    cache: Path | str,
    split: str,
    start: int = 0,
    stop: int | None = None,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    image_size: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """``(x, y, ids)`` batches of split indices ``[start, stop)`` of a prepared cache.

    Images become float [0, 1] on ``device``, resized to ``image_size`` when given, by the
    same function training and evaluation use (:func:`medhpc.data.cache.prepare_batch`),
    so the shard holds the images the model was evaluated on.
    """
    from medhpc.data.cache import CacheDataset, prepare_batch

    if batch_size < 1:
        raise ShardError(f"batch_size must be >= 1, got {batch_size}")
    ds = CacheDataset(cache, split)
    stop = len(ds) if stop is None else stop
    if not 0 <= start < stop <= len(ds):
        raise ShardError(f"slice [{start}, {stop}) is not inside split {split!r} of {cache} ({len(ds)} images)")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    try:
        for lo in range(start, stop, batch_size):
            hi = min(stop, lo + batch_size)
            images, labels = ds.read_batch(np.arange(lo, hi))
            x = prepare_batch(torch.from_numpy(images).permute(0, 3, 1, 2), dev, image_size, False)
            yield x, torch.from_numpy(labels), ds.ids[lo:hi]
    finally:
        ds.close()


__all__ = ["DEFAULT_SAMPLES", "attack_to_shard", "cache_batches", "default_samples"]
