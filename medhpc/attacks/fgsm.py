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
    begin,
    ce_ascent,
    clamp_box,
    eot_gradient,
    finish,
)
from medhpc.attacks.spec import AttackSpec


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
    s = begin(SPEC, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed,
              generator=generator, eps=eps, norm=norm, eot=eot)  # fmt: skip
    assert s.eps is not None and s.norm is not None
    labels = s.labels
    grad, _, _ = eot_gradient(
        model, s.x, lambda logits: ce_ascent(logits, labels, targeted), eot=s.eot, seed=s.seed, step=0,
        stochastic=s.stochastic,
    )  # fmt: skip
    x_adv = clamp_box(s.x + s.eps * ascent_direction(grad, s.norm), s.box)
    return finish(model, s.x, x_adv, labels, targeted, s.seed)


SPEC = AttackSpec("fgsm", fgsm, bounded=True, white_box=True, iterative=False)
