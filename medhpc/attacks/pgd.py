"""Projected Gradient Descent (Madry et al. 2018; Kurakin et al.'s BIM without the random start).

Each step is CleverHans 4.0.0's: a fast-gradient step of size ``step_size`` from the current
iterate, clipped to the pixel range, then projected back onto the ε-ball around ``x`` and
clipped again. Given the same random start the iterates equal CleverHans' to float tolerance.
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
    project,
    project_to_feasible,
    random_start,
    resolve_labels,
    resolve_rng,
    warn_training_mode,
)
from medhpc.models.noise import is_stochastic


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    random_init: bool = True,
    init: torch.Tensor | None = None,
    clip: Clip | None = (0.0, 1.0),
    label_mode: LabelMode = "true",
    targeted: bool = False,
    eot: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Iterated fast-gradient steps projected onto the ε-ball (L∞ or L2) and the pixel range.

    Parameters
    ----------
    eps : radius of the ball in ``norm``.
    step_size : size of each step in ``norm`` (the paper: 0.01 at ε = 0.02).
    steps : number of gradient steps (the paper: 1, 2, 5).
    random_init : start from a random point of the ball (uniform in the cube for L∞, uniform
        in the ball for L2), drawn from ``seed`` / ``generator`` on the images' device.
    init : an explicit starting perturbation (B, ...) instead (projected onto the ball and
        the pixel range first): how the parity tests hand CleverHans' start to this attack.
    eot : gradient averaged over this many model draws per step (stochastic models).

    Other parameters as :func:`medhpc.attacks.fgsm`. The result is the last iterate.
    """
    check_batch(x, y)
    eps = check_number("eps", eps)
    step_size = check_number("step_size", step_size)
    steps = check_count("steps", steps)
    norm_ = check_norm(norm)
    box = check_clip(clip)
    mode = check_label_mode(label_mode, y, targeted)
    eot = check_count("eot", eot)
    if init is not None and init.shape != x.shape:
        raise ValueError(f"init must have the images' shape {tuple(x.shape)}, got {tuple(init.shape)}")
    warn_training_mode(model, "pgd")
    gen, base = resolve_rng(x.device, seed, generator)
    x = x.detach()
    labels = resolve_labels(model, x, y, mode, base)
    noisy = is_stochastic(model)
    if init is not None:
        delta = init.detach().to(device=x.device, dtype=x.dtype)
    elif random_init:
        delta = random_start(x, eps, norm_, gen)
    else:
        delta = torch.zeros_like(x)
    x_adv = clamp_box(x + project(delta, norm_, eps), box)

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return ce_ascent(logits, labels, targeted)

    for step in range(steps):
        grad, _, _ = eot_gradient(model, x_adv, loss_fn, eot=eot, seed=base, step=step, stochastic=noisy)
        x_adv = clamp_box(x_adv + step_size * ascent_direction(grad, norm_), box)
        x_adv = project_to_feasible(x, x_adv, norm_, eps, box)
    return finish(model, x, x_adv, labels, targeted, base)
