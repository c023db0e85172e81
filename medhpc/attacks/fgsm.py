"""Fast Gradient (Sign) Method (Goodfellow et al. 2015): one step of size ε along the loss gradient.

Matches CleverHans 4.0.0's ``fast_gradient_method``: ``clip(x + ε·dir(∇ CE))`` with
``dir = sign`` for L∞ and ``g / ||g||`` for L2; the labels are the model's own predictions when
none are given.
"""

from __future__ import annotations

import torch
from torch import nn

from medhpc.attacks.common import (
    AttackResult,
    Clip,
    LabelMode,
    ascent_direction,
    ce_ascent,
    check_batch,
    check_clip,
    check_count,
    check_label_mode,
    check_norm,
    check_number,
    clamp_box,
    eot_gradient,
    finish,
    resolve_labels,
    resolve_rng,
    warn_training_mode,
)


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    norm: str = "linf",
    clip: Clip | None = (0.0, 1.0),
    label_mode: LabelMode = "true",
    targeted: bool = False,
    eot: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """One-step attack: ``x + ε · dir(∇_x loss)``, clipped to the pixel range.

    Parameters
    ----------
    model : images -> logits (B, C); used as it is (call ``eval()`` first).
    x : (B, ...) images in the clip range.
    y : (B,) labels; None attacks the model's own predictions. Targeted: the target classes.
    eps : step size = the attack's budget in ``norm``.
    norm : "linf" (FGSM proper, sign of the gradient) or "l2" (fast gradient method).
    clip : valid pixel range, or None for none (the original scripts did not clip).
    label_mode : "true" uses ``y``; "pred" the model's predictions on ``x`` (as the scripts).
    targeted : descend the cross-entropy of the target ``y`` instead of ascending that of the label.
    eot : gradient averaged over this many model draws (stochastic models only).
    seed, generator : name the model draws of a stochastic model (FGSM itself is deterministic).
    """
    check_batch(x, y)
    eps = check_number("eps", eps)
    norm_ = check_norm(norm)
    box = check_clip(clip)
    mode = check_label_mode(label_mode, y, targeted)
    eot = check_count("eot", eot)
    warn_training_mode(model, "fgsm")
    _, base = resolve_rng(x.device, seed, generator)
    x = x.detach()
    labels = resolve_labels(model, x, y, mode, base)
    grad, _, _ = eot_gradient(
        model, x, lambda logits: ce_ascent(logits, labels, targeted), eot=eot, seed=base, step=0
    )
    x_adv = clamp_box(x + eps * ascent_direction(grad, norm_), box)
    return finish(model, x, x_adv, labels, targeted, base)
