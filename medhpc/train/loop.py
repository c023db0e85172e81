"""``train(cfg)``: one training run, resumable exactly, safe to rerun.

A run lives in ``<out>/<arch>-<head>-<config hash>/``: ``config.yaml`` (resolved), ``last.pt``
(written every epoch; a killed run resumes from it and ends with the same weights as an
uninterrupted one), ``best.pt`` (the weights with the lowest validation loss: the model kept),
``history.json``, TensorBoard event files (``events.out.tfevents.*``, see
:mod:`medhpc.train.events`) and, last, ``metrics.json`` (the kept model on validation and test). A run
whose ``metrics.json`` exists is finished and is skipped.

An adversarially trained run (``adversarial:``, :mod:`medhpc.train.adversarial`) is named
``<arch>-<head>-<method tag>-<hash>``; it keeps the model with the lowest validation loss under
PGD (``val_robust_loss`` in the history, beside the clean ``val_loss``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from medhpc import __version__, atomic
from medhpc.config import ConfigError, config_hash, to_dict
from medhpc.data.cache import CacheLoader, cache_info, prepare_batch
from medhpc.data.errors import DataError
from medhpc.device import resolve_device
from medhpc.models import Classifier, build_model
from medhpc.train import adversarial, checkpoint, features, runtime
from medhpc.train.checkpoint import Progress
from medhpc.train.config import TrainConfig
from medhpc.train.evaluate import metrics_of, predict, write_predictions
from medhpc.train.events import EpochEvents
from medhpc.train.runtime import autocast_dtype

log = logging.getLogger(__name__)

METRICS = "metrics.json"
HISTORY = "history.json"
CONFIG = "config.yaml"


def run_dir(cfg: TrainConfig) -> Path:
    """The run's folder, named by architecture, head, defence (when adversarial) and config hash."""
    defence = f"-{cfg.adversarial.spec.tag}" if cfg.adversarial is not None else ""
    return Path(cfg.out) / f"{cfg.model.arch}-{cfg.model.head}{defence}-{config_hash(cfg)}"


def class_weights(labels: np.ndarray, classes: int) -> torch.Tensor:
    """w_c = N / N_c (the tables' weighted cross-entropy); a class absent from training is an error."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    if (counts == 0).any():
        missing = [int(c) for c in np.flatnonzero(counts == 0)]
        raise DataError(f"class(es) {missing} have no training images: cannot weight the loss")
    return torch.tensor(labels.size / counts, dtype=torch.float32)


def _check_cache(cfg: TrainConfig) -> dict[str, Any]:
    info = cache_info(cfg.data.cache)
    classes = info.get("classes", [])
    if len(classes) != cfg.model.classes:
        raise ConfigError(
            f"model.classes is {cfg.model.classes} but the cache {cfg.data.cache} has {len(classes)} classes {classes}"
        )
    for split in ("train", "val", "test"):
        if info["counts"].get(split, 0) == 0:
            raise DataError(f"cache {cfg.data.cache} has no {split!r} images")
    size = cfg.data.image_size or int(info["size"])
    arch = cfg.model.arch_spec
    where = "data.image_size" if cfg.data.image_size else "the cache " + cfg.data.cache
    if size < arch.min_size:
        raise ConfigError(f"{cfg.model.arch} needs images of at least {arch.min_size} px; {where} gives {size}")
    if size % arch.size_multiple:
        raise ConfigError(f"{cfg.model.arch} needs an image side that is a multiple of {arch.size_multiple} "
                          f"(its patch size); {where} gives {size}")  # fmt: skip
    return info


def init_backbone(model: Classifier, source: str) -> None:
    """Copy the backbone of a finished run (folder or checkpoint) into ``model``."""
    path = checkpoint.resolve(source)
    ckpt = checkpoint.load(path)
    arch = ckpt.get("config", {}).get("model", {}).get("arch")
    if arch != model.cfg.arch:
        raise ConfigError(f"init_from: {path} holds a {arch} model, this run is {model.cfg.arch}")
    state = {k[len("backbone.") :]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    try:
        model.backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"init_from: {path}: backbone does not match: {exc}") from None
    log.info("backbone initialised from %s", path)


def record_epoch(state: Progress, val_loss: float, patience: int | None, min_delta: float = 0.0) -> bool:
    """Count a finished epoch; True when its validation loss is the best so far (keep it).

    An epoch improves when its finite validation loss is below the best by more than
    ``min_delta``. Early stopping: after ``patience`` epochs in a row without improvement,
    ``state.stopped_early`` is set and no further epoch runs.
    """
    state.epoch += 1
    if math.isfinite(val_loss) and val_loss < state.best_val_loss - min_delta:
        state.best_val_loss, state.best_epoch, state.bad_epochs = val_loss, state.epoch, 0
        return True
    state.bad_epochs += 1
    if patience is not None and state.bad_epochs >= patience:
        state.stopped_early = True
    return False


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def _loss(
    out: Any, y: torch.Tensor, weights: torch.Tensor | None, cfg: TrainConfig, kl_weight: float | None
) -> torch.Tensor:
    """Cross-entropy, InceptionV3's auxiliary term, and the head's KL term (its spec's weight: β)."""
    loss = F.cross_entropy(out.logits.float(), y, weight=weights)
    if out.aux_logits is not None and cfg.aux_weight > 0:
        loss = loss + cfg.aux_weight * F.cross_entropy(out.aux_logits.float(), y, weight=weights)
    if out.kl is not None and kl_weight is not None:
        loss = loss + kl_weight * out.kl.float().mean()
    return loss


def train(cfg: TrainConfig, progress: bool | None = None) -> Path:
    """Train (or resume, or skip if finished) the run ``cfg`` describes; returns its folder."""
    out = run_dir(cfg)
    chash = config_hash(cfg)
    if (out / METRICS).is_file():
        done = json.loads((out / METRICS).read_text())
        if done.get("config_hash") == chash:
            log.info("%s: finished earlier, skipping", out)
            return out
    info = _check_cache(cfg)
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = to_dict(cfg)
    atomic.write_text(_yaml(cfg_dict), out / CONFIG)

    device = resolve_device(cfg.device)
    with runtime.numerics(device, tf32=cfg.tf32, deterministic=cfg.deterministic):
        return _train(cfg, out, chash, cfg_dict, info, device, progress)


def _train(
    cfg: TrainConfig,
    out: Path,
    chash: str,
    cfg_dict: dict[str, Any],
    info: dict[str, Any],
    device: torch.device,
    progress: bool | None,
) -> Path:
    amp = autocast_dtype(cfg.precision, device)
    numerics = runtime.describe(device, amp, cfg.tf32)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    if cfg.init_from:
        init_backbone(model, cfg.init_from)
    if cfg.model.freeze_backbone and cfg.model.weights == "none" and not cfg.init_from:
        log.warning("the backbone is frozen at its random initialisation (no weights, no init_from)")
    # torch's stubs lack Module.to's memory_format, which it accepts (channels_last on CUDA).
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)  # type: ignore[call-overload]
    optimizer = _make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.optim.decay_every, gamma=cfg.optim.decay_gamma)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None

    train_loader = CacheLoader(
        cfg.data.cache, "train", batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
        num_workers=cfg.num_workers, pin_memory=device.type == "cuda", persistent_workers=True,
    )  # fmt: skip
    val_loader = CacheLoader(cfg.data.cache, "val", batch_size=cfg.eval_batch_size, pin_memory=device.type == "cuda")
    train_labels = train_loader.dataset.labels
    weights = class_weights(train_labels, cfg.model.classes).to(device) if cfg.loss_weighting == "weighted" else None
    kl_weight = cfg.model.head_spec.loss_weight(cfg.model)
    beta = kl_weight or 0.0
    adv = cfg.adversarial

    def plain_loss(out: Any, y: torch.Tensor) -> torch.Tensor:
        return _loss(out, y, weights, cfg, kl_weight)

    progress_state = Progress()
    last = out / checkpoint.LAST
    if last.is_file():
        # On the CPU: the RNG states must stay host tensors; load_state_dict moves the rest.
        ckpt = checkpoint.load(last, map_location="cpu")
        if ckpt.get("config_hash") != chash:
            raise checkpoint.CheckpointError(
                f"{last} belongs to another config (hash {ckpt.get('config_hash')} != {chash})"
            )
        checkpoint.check_runtime(ckpt, numerics, last)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        try:
            checkpoint.set_rng_state(ckpt["rng"], device)
        except checkpoint.CheckpointError as exc:
            raise checkpoint.CheckpointError(f"{last}: {exc}") from None
        progress_state = Progress(**ckpt["progress"])
        log.info("%s: resuming after epoch %d", out, progress_state.epoch)

    log.info(
        "%s: %s/%s on %s, %d train / %d val images, %s",
        out, cfg.model.arch, cfg.model.head, device, len(train_loader.dataset), len(val_loader.dataset),
        runtime.render(numerics),
    )  # fmt: skip
    if adv is not None:
        log.info("adversarial training: %s; kept model by PGD-%d validation loss", adversarial.describe(adv),
                 adv.val_steps)  # fmt: skip
        if scaler is not None:
            log.warning("fp16: the inner attacks' input gradients are not loss-scaled and may underflow "
                        "(weaker examples); bf16 autocast has no such problem")  # fmt: skip
    feats = features.prepare(cfg, model, device, amp, channels_last) if features.eligible(cfg) else None
    events = EpochEvents(out, first_epoch=progress_state.epoch + 1)
    try:
        while progress_state.epoch < cfg.epochs and not progress_state.stopped_early:
            epoch = progress_state.epoch
            model.train()
            train_loader.set_epoch(epoch)
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            seen = 0
            batches = train_loader if feats is None else feats.batches("train", train_loader.batch_indices(), device)
            for index, batch in enumerate(tqdm(
                batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, total=len(train_loader),
                disable=None if progress is None else not progress,
            )):  # fmt: skip
                if feats is None:
                    x = prepare_batch(batch[0], device, cfg.data.image_size, channels_last)
                    y = batch[1].to(device, non_blocking=True)
                else:
                    x, y = batch  # the pooled features (B, C, 1, 1): the head pools them to themselves
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    if feats is not None:
                        loss = plain_loss(features.forward_train(model, x), y)
                    elif adv is None:
                        loss = plain_loss(model.forward_train(x), y)
                    else:  # the method crafts its examples (eval mode) and returns the step's loss
                        seed = adversarial.batch_seed(cfg.seed, epoch, index)
                        loss = adv.spec.loss(model, x, y, adv, seed, plain_loss)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                loss_sum += loss.detach() * y.shape[0]
                seen += y.shape[0]
            scheduler.step()
            train_time = time.perf_counter() - started
            if feats is None:
                val_pred = predict(model, val_loader, device, image_size=cfg.data.image_size,
                                   channels_last=channels_last, autocast_dtype=amp, seed=cfg.seed + epoch + 1,
                                   progress=False)  # fmt: skip
            else:
                val_pred = features.predict(model, feats, "val", device, batch_size=cfg.eval_batch_size,
                                            autocast_dtype=amp, seed=cfg.seed + epoch + 1)  # fmt: skip
            val = metrics_of(val_pred, weights, beta)
            record = {
                "epoch": epoch + 1,
                "train_loss": float(loss_sum) / max(seen, 1),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_balanced_accuracy": val.get("balanced_accuracy"),
                "lr": optimizer.param_groups[0]["lr"],
                "train_images_per_s": seen / train_time if train_time > 0 else None,
            }
            keep_loss = val["loss"]
            if adv is not None:
                robust = metrics_of(
                    predict(model, val_loader, device, image_size=cfg.data.image_size, channels_last=channels_last,
                            autocast_dtype=amp, seed=cfg.seed + epoch + 1, progress=False,
                            perturb=adversarial.validation_perturb(adv, cfg.seed, epoch)),
                    weights, beta,
                )  # fmt: skip
                record["val_robust_loss"], record["val_robust_accuracy"] = robust["loss"], robust["accuracy"]
                keep_loss = robust["loss"]
            progress_state.history.append(record)
            events.write(record)  # before the checkpoint: a resumed run purges, never misses, an epoch
            if record_epoch(progress_state, keep_loss, cfg.patience, cfg.min_delta):
                checkpoint.save_weights(
                    out / checkpoint.BEST, model=model, config=cfg_dict, config_hash=chash,
                    epoch=epoch + 1, val_loss=keep_loss,
                )  # fmt: skip
            checkpoint.save(
                last, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                progress=progress_state, config=cfg_dict, config_hash=chash, device=device, numerics=numerics,
            )  # fmt: skip
            atomic.write_json(progress_state.history, out / HISTORY)
            log.info(
                "epoch %d/%d: train loss %.4f, val loss %.4f, val acc %.3f%s, %.0f img/s%s",
                epoch + 1, cfg.epochs, record["train_loss"], val["loss"], val["accuracy"],
                "" if adv is None else f" (under PGD: loss {keep_loss:.4f}, acc {record['val_robust_accuracy']:.3f})",
                record["train_images_per_s"] or 0.0,
                " (early stop)" if progress_state.stopped_early else "",
            )  # fmt: skip
    finally:
        events.close()
        train_loader.close()
        val_loader.close()

    return _finish(cfg, out, chash, model, device, channels_last, amp, weights, beta, progress_state, info)


def _finish(
    cfg: TrainConfig,
    out: Path,
    chash: str,
    model: Classifier,
    device: torch.device,
    channels_last: bool,
    amp: torch.dtype | None,
    weights: torch.Tensor | None,
    beta: float,
    state: Progress,
    info: dict[str, Any],
) -> Path:
    """Evaluate the kept model (lowest validation loss, robust when adversarial) and write
    ``metrics.json`` last; an adversarial run's kept model is also evaluated under its
    epoch's validation PGD (``val_robust``: the same attack, seeds and so loss that kept it)."""
    if not (out / checkpoint.BEST).is_file():
        raise checkpoint.CheckpointError(
            f"{out}: no epoch had a finite validation loss (training diverged?); see {out / HISTORY}"
        )
    best = checkpoint.load(out / checkpoint.BEST, map_location="cpu")
    model.load_state_dict(best["model"])
    results: dict[str, Any] = {}
    for split in ("val", "test"):
        with CacheLoader(cfg.data.cache, split, batch_size=cfg.eval_batch_size) as loader:
            pred = predict(
                model, loader, device, image_size=cfg.data.image_size, channels_last=channels_last,
                autocast_dtype=amp, seed=cfg.seed, progress=False,
            )  # fmt: skip
        write_predictions(pred, out / f"predictions-{split}.npz")
        results[split] = metrics_of(pred, weights, beta)
    if cfg.adversarial is not None:
        with CacheLoader(cfg.data.cache, "val", batch_size=cfg.eval_batch_size) as loader:
            pred = predict(
                model, loader, device, image_size=cfg.data.image_size, channels_last=channels_last,
                autocast_dtype=amp, seed=cfg.seed, progress=False,
                perturb=adversarial.validation_perturb(cfg.adversarial, cfg.seed, state.best_epoch - 1),
            )  # fmt: skip
        results["val_robust"] = metrics_of(pred, weights, beta)
    metrics = {
        "config_hash": chash,
        "medhpc_version": __version__,
        "arch": cfg.model.arch,
        "head": cfg.model.head,
        "cache": str(cfg.data.cache),
        "classes": info.get("classes"),
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss,
        "kept_by": "val_loss" if cfg.adversarial is None else "val_robust_loss",
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "eval_samples": cfg.model.vib.eval_samples if cfg.model.vib is not None else 1,
        "device": str(device),
        **results,
    }
    atomic.write_json(metrics, out / METRICS)
    t = results["test"]
    log.info(
        "%s: kept epoch %d; test accuracy %.3f [%.3f, %.3f], ROC-AUC %s",
        out, state.best_epoch, t["accuracy"], *t["accuracy_ci95"],
        "n/a" if t.get("roc_auc") is None else f"{t['roc_auc']:.3f}",
    )  # fmt: skip
    return out


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
