"""Where the model looks, clean and under attack: Grad-CAM and soft-attention maps, scored
against lesion masks and against each other.

Grad-CAM (reference-facts §6): α_k = spatial mean of ∂y_c/∂A_k at the model's ``cam_layer``
(ResNet50 ``layer4[-1]``, InceptionV3 ``Mixed_7c``), map = ReLU(Σ_k α_k A_k). A token model
(ViT-B/16) is read at its last encoder block's patch tokens, which the model's ``cam_map``
lays on their (h, w) grid, class token dropped (pytorch-grad-cam's ``reshape_transform``),
before the same formula. Each image has
its own target c (a common library silently explains only the first image when given one
target for a batch; :func:`grad_cam` takes a target per image and is tested for it). VIB
models are explained through their noise-free μ path (:meth:`Classifier.expected_logits`), so
the map is a property of the model, not of one draw. The attention map is the soft-attention
head's A (the sum of its K maps).

Maps are kept at the layer's resolution; :func:`upsample` brings them to the input size
(bilinear) and scales each to [0, 1], as Grad-CAM prescribes, before they are scored:

* **pointing game**: the map's maximum falls on a lesion pixel (images with a lesion only);
* **top-cell IoU**: on a ``grid`` × ``grid`` partition of the image, the k cells with the most
  map mass against the k cells that hold lesion pixels (k = the number of those cells);
* **shift** between the clean and the adversarial map of an image: Pearson correlation and
  mean absolute difference of the scaled maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (B, h, w) at ``model.cam_layer`` for one target class per image.

    The layer's output is re-rooted as a leaf, so frozen backbones (no parameter gradients)
    work too and no parameter gradient is computed. Images are independent in eval mode
    (BatchNorm uses its running statistics), so a batch gives the maps of single images.
    A model with a ``cam_map`` (the classifier) turns the layer's output and its gradient
    into (B, C, h, w) maps first (a ViT's tokens onto their patch grid).
    """
    if target.shape != (x.shape[0],):
        raise ValueError(f"need one target per image: {x.shape[0]} images, target shape {tuple(target.shape)}")
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = model.cam_layer.register_forward_hook(hook)  # type: ignore[union-attr]
    try:
        with torch.enable_grad():
            logits = model.expected_logits(x)  # type: ignore[operator]
            chosen = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            (acts,) = captured
            (grads,) = torch.autograd.grad(chosen, acts)
    finally:
        handle.remove()
    to_map = getattr(model, "cam_map", None)
    if callable(to_map):
        size = (x.shape[-2], x.shape[-1])
        acts, grads = to_map(acts, size), to_map(grads, size)
    alpha = grads.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * acts.detach().float()).sum(1))


def attention_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The soft-attention head's map A (B, h, w): where its features are weighted."""
    with torch.no_grad():
        t = model.features(x)[0]  # type: ignore[operator]
        return model.head.attention(t)[:, 0].float()  # type: ignore[union-attr,operator]


def has_attention(model: nn.Module) -> bool:
    return callable(getattr(getattr(model, "head", None), "attention", None))


def upsample(maps: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """Bilinear to ``size`` × ``size`` and min-max scaled per image (a flat map becomes 0)."""
    m = torch.as_tensor(np.asarray(maps, dtype=np.float32))[:, None]
    up = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy().astype(np.float64)
    lo = up.min(axis=(1, 2), keepdims=True)
    span = up.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (up - lo) / np.where(span > 0, span, 1.0), 0.0)


def _cells(a: np.ndarray, grid: int) -> np.ndarray:
    """Mean of each of grid × grid cells (B, grid, grid); the image size need not divide."""
    return F.adaptive_avg_pool2d(torch.as_tensor(a, dtype=torch.float64)[:, None], grid)[:, 0].numpy()


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: 1.0 if the (first) maximum of the scaled map is a lesion pixel, NaN without
    a lesion. ``maps`` and ``masks`` are (B, H, W) at the same size."""
    masks = np.asarray(masks) > 0
    flat = maps.reshape(maps.shape[0], -1).argmax(1)
    hit = masks.reshape(masks.shape[0], -1)[np.arange(maps.shape[0]), flat]
    return np.where(masks.any(axis=(1, 2)), hit.astype(np.float64), np.nan)


def top_cell_iou(maps: np.ndarray, masks: np.ndarray, grid: int) -> np.ndarray:
    """Per image: IoU of the k highest-mass cells of the map with the k lesion cells, NaN
    without a lesion. Ties in map mass go to the earlier cell in row-major order."""
    lesion = _cells((np.asarray(masks) > 0).astype(np.float64), grid).reshape(len(maps), -1) > 0
    mass = _cells(maps, grid).reshape(len(maps), -1)
    out = np.full(len(maps), np.nan)
    for i in range(len(maps)):
        k = int(lesion[i].sum())
        if k == 0:
            continue
        top = np.zeros_like(lesion[i])
        top[np.argsort(-mass[i], kind="mergesort")[:k]] = True
        out[i] = (top & lesion[i]).sum() / (top | lesion[i]).sum()
    return out


def shift(clean: np.ndarray, adv: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: Pearson correlation (NaN when either map is flat) and mean |difference| of
    two scaled maps (B, H, W)."""
    a = clean.reshape(len(clean), -1)
    b = adv.reshape(len(adv), -1)
    da, db = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    denom = np.sqrt((da * da).sum(1) * (db * db).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, (da * db).sum(1) / np.where(denom > 0, denom, 1.0), np.nan)
    return {"correlation": r, "abs_diff": np.abs(a - b).mean(1)}


def _mean(v: np.ndarray) -> float | None:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def score(maps: np.ndarray, masks: np.ndarray | None, grid: int) -> dict[str, Any]:
    """Mean pointing-game hit rate and top-cell IoU of scaled maps (None without masks)."""
    if masks is None:
        return {"pointing_game": None, "top_cell_iou": None, "n_lesion": 0}
    pg = pointing_game(maps, masks)
    return {"pointing_game": _mean(pg), "top_cell_iou": _mean(top_cell_iou(maps, masks, grid)),
            "n_lesion": int((~np.isnan(pg)).sum())}  # fmt: skip


def compare(clean: np.ndarray, adv: np.ndarray) -> dict[str, Any]:
    """Mean shift between clean and adversarial scaled maps."""
    s = shift(clean, adv)
    return {"correlation": _mean(s["correlation"]), "abs_diff": _mean(s["abs_diff"])}


def model_maps(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int = 32
) -> dict[str, np.ndarray]:
    """Raw Grad-CAM (and, for an attentive model, attention) maps of images ``x``, batched."""
    cams, atts = [], []
    for lo in range(0, x.shape[0], batch_size):
        xb, tb = x[lo : lo + batch_size], target[lo : lo + batch_size]
        cams.append(grad_cam(model, xb, tb).cpu().numpy())
        if has_attention(model):
            atts.append(attention_map(model, xb).cpu().numpy())
    out = {"gradcam": np.concatenate(cams)}
    if atts:
        out["attention"] = np.concatenate(atts)
    return out
