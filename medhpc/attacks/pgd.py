"""Projected Gradient Descent (Madry et al. 2018; Kurakin et al.'s BIM without the random start).

Each step is CleverHans 4.0.0's: a fast-gradient step of size ``step_size`` from the current
iterate, clipped to the pixel range, then projected back onto the ε-ball around ``x`` and
clipped again. Given the same random start the iterates equal CleverHans' to float tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medhpc.attacks.common import (
    AttackResult,
    Clip,
    LabelMode,
    ascent_direction,
    begin,
    ce_ascent,
    check_count,
    check_number,
    clamp_box,
    eot_gradient,
    finish,
    project,
    project_to_feasible,
    random_start,
)
from medhpc.attacks.spec import AttackSpec


def default_step_size(eps: float, steps: int) -> float:
    """2.5 ε / steps, capped at ε (Madry et al.): the step when a config leaves it out."""
    return min(eps, 2.5 * eps / steps)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    step_size: float | None = None,
    steps: int = 10,
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
    step_size : size of each step in ``norm`` (the paper: 0.01 at ε = 0.02); None is
        :func:`default_step_size`.
    steps : number of gradient steps (the paper: 1, 2, 5).
    random_init : start from a random point of the ball (uniform in the cube for L∞, uniform
        in the ball for L2), drawn from ``seed`` / ``generator`` on the images' device.
    init : an explicit starting perturbation (B, ...) instead (projected onto the ball and
        the pixel range first): how the parity tests hand CleverHans' start to this attack.
    eot : gradient averaged over this many model draws per step (stochastic models).

    Other parameters as :func:`medhpc.attacks.fgsm`. The result is the last iterate.
    """
    steps = check_count("steps", steps)
    if step_size is not None:
        step_size = check_number("step_size", step_size)
    if init is not None and init.shape != x.shape:
        raise ValueError(f"init must have the images' shape {tuple(x.shape)}, got {tuple(init.shape)}")
    s = begin(SPEC, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed,
              generator=generator, eps=eps, norm=norm, eot=eot)  # fmt: skip
    assert s.eps is not None and s.norm is not None
    x, eps, norm_, box, labels = s.x, s.eps, s.norm, s.box, s.labels
    step = default_step_size(eps, steps) if step_size is None else step_size
    if init is not None:
        delta = init.detach().to(device=x.device, dtype=x.dtype)
    elif random_init:
        delta = random_start(x, eps, norm_, s.generator)
    else:
        delta = torch.zeros_like(x)
    x_adv = clamp_box(x + project(delta, norm_, eps), box)

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return ce_ascent(logits, labels, targeted)

    for i in range(steps):
        grad, _, _ = eot_gradient(model, x_adv, loss_fn, eot=s.eot, seed=s.seed, step=i, stochastic=s.stochastic)
        x_adv = clamp_box(x_adv + step * ascent_direction(grad, norm_), box)
        x_adv = project_to_feasible(x, x_adv, norm_, eps, box)
    return finish(model, x, x_adv, labels, targeted, s.seed)


def _reaches_surface(config: Mapping[str, Any]) -> bool:
    """Whether ``steps`` steps of ``step_size`` can get from x to the ball's surface."""
    return bool(config["steps"] * config["step_size"] >= config["eps"] * (1 - 1e-9))


SPEC = AttackSpec(
    "pgd", pgd, bounded=True, white_box=True, iterative=True,
    derived={"step_size": lambda c: default_step_size(c["eps"], c["steps"])},
    reaches_surface=_reaches_surface, fixed=("init",),
)  # fmt: skip
