"""APGD-CE (Croce & Hein 2020): PGD with momentum and a step size that adapts per image.

The step starts at 2ε and is halved at checkpoints where the loss stopped rising; after a
halving the image restarts from the best point seen so far. The cross-entropy loss needs no
third class, so this runs on 2-class models (the popular implementations' DLR loss indexes the
third-largest logit and fails there, and their index bookkeeping breaks on batches of one).

Algorithm (Croce & Hein 2020, Alg. 1, with the published implementation's integer schedule):
x1 = P(x0 + η∇); then x_{k+1} = P(x_k + α(z_{k+1} − x_k) + (1 − α)(x_k − x_{k−1})) with
z_{k+1} = P(x_k + η·dir(∇f(x_k))) and momentum α = 0.75. Checkpoints: the first after
⌈0.22·N⌉ iterations, each next interval 0.03·N shorter, at least 0.06·N. At a checkpoint an
image's step is halved if (1) its loss rose in at most ρ = 75 % of the interval's iterations,
or (2) its step was not halved at the previous checkpoint and its best loss has not improved
since. Every per-image decision is a ``torch.where``: no host synchronisation in the loop.
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
    check_count,
    check_number,
    clamp_box,
    decide,
    derive_seed,
    eot_gradient,
    finish,
    project,
    project_to_feasible,
    random_start,
)
from medhpc.attacks.spec import AttackSpec


def checkpoint_schedule(steps: int) -> list[int]:
    """Iterations (1-based counts) after which the step-size conditions are checked.

    The published implementation's integers: first interval ``max(int(0.22 N), 1)``, each
    next one ``max(int(0.03 N), 1)`` shorter, down to ``max(int(0.06 N), 1)``.
    """
    first = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    floor = max(int(0.06 * steps), 1)
    marks, at, interval = [], 0, first
    while at + interval <= steps:
        at += interval
        marks.append(at)
        interval = max(interval - shrink, floor)
    return marks


def apgd_ce(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    steps: int = 100,
    norm: str = "linf",
    restarts: int = 1,
    random_init: bool = True,
    momentum: float = 0.75,
    rho: float = 0.75,
    clip: Clip | None = (0.0, 1.0),
    label_mode: LabelMode = "true",
    targeted: bool = False,
    eot: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Auto-PGD on the cross-entropy, L∞ or L2.

    Parameters
    ----------
    eps : radius of the ε-ball.
    steps : iterations per restart (Croce & Hein: 100).
    restarts : independent runs from fresh random starts; an image keeps the first success,
        else the highest-loss point over all runs.
    random_init : start at a random point of the ball (else at ``x``; then restarts repeat).
    momentum : α, the weight of the new step against the previous move (0.75).
    rho : ρ, the share of rising iterations below which a checkpoint halves the step (0.75).
    eot : gradient and loss averaged over this many model draws per iterate.

    Returns
    -------
    AttackResult: per image a successful iterate if one was found, else the highest-loss one.
    """
    steps = check_count("steps", steps)
    restarts = check_count("restarts", restarts)
    momentum = check_number("momentum", momentum)
    if momentum > 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    rho = check_number("rho", rho)
    if rho > 1:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    s = begin(SPEC, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed,
              generator=generator, eps=eps, norm=norm, eot=eot)  # fmt: skip
    assert s.eps is not None and s.norm is not None
    x, eps, norm_, box, labels, gen, base, eot, noisy = (
        s.x, s.eps, s.norm, s.box, s.labels, s.generator, s.seed, s.eot, s.stochastic
    )

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return ce_ascent(logits, labels, targeted)

    bshape = (x.shape[0],) + (1,) * (x.dim() - 1)
    found_all = torch.zeros((x.shape[0],), dtype=torch.bool, device=x.device)
    adv_all = x.clone()
    best_all = x.clone()
    best_loss_all = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)
    marks = set(checkpoint_schedule(steps))

    for restart in range(restarts):
        run_seed = derive_seed(base, restart)
        delta = random_start(x, eps, norm_, gen) if random_init else torch.zeros_like(x)
        x_cur = clamp_box(x + project(delta, norm_, eps), box)
        grad, logits, loss = eot_gradient(
            model, x_cur, loss_fn, eot=eot, seed=run_seed, step=0, stochastic=noisy
        )
        found = decide(logits, labels, targeted)[1]
        adv = x_cur.clone()
        x_best, grad_best, loss_best = x_cur.clone(), grad.clone(), loss.clone()
        x_prev = x_cur.clone()
        prev_loss = loss
        step = torch.full((x.shape[0],), 2.0 * eps, dtype=x.dtype, device=x.device)
        rises = torch.zeros((x.shape[0],), dtype=x.dtype, device=x.device)
        reduced_last = torch.ones((x.shape[0],), dtype=torch.bool, device=x.device)
        loss_best_last = loss_best.clone()
        since_check = 0

        for i in range(steps):
            a = 1.0 if i == 0 else momentum
            z = project_to_feasible(
                x, x_cur + step.view(bshape) * ascent_direction(grad, norm_), norm_, eps, box
            )
            x_new = project_to_feasible(
                x, x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), norm_, eps, box
            )
            x_prev = x_cur
            grad, logits, loss = eot_gradient(
                model, x_new, loss_fn, eot=eot, seed=run_seed, step=i + 1, stochastic=noisy
            )
            fooled = decide(logits, labels, targeted)[1]
            adv = torch.where((fooled & ~found).view(bshape), x_new, adv)  # keep the first success
            found |= fooled
            improved = loss > loss_best
            x_best = torch.where(improved.view(bshape), x_new, x_best)
            grad_best = torch.where(improved.view(bshape), grad, grad_best)
            loss_best = torch.where(improved, loss, loss_best)
            rises += (loss > prev_loss).to(rises.dtype)
            prev_loss = loss
            x_cur = x_new
            since_check += 1
            if i + 1 in marks:
                stalled = rises <= rho * since_check
                no_progress = ~reduced_last & (loss_best_last >= loss_best)
                halve = stalled | no_progress
                step = torch.where(halve, step / 2, step)
                x_cur = torch.where(halve.view(bshape), x_best, x_cur)
                grad = torch.where(halve.view(bshape), grad_best, grad)
                reduced_last = halve
                loss_best_last = loss_best.clone()
                rises.zero_()
                since_check = 0

        # Merge this run: the first success stays; otherwise the higher loss wins.
        take_adv = found & ~found_all
        adv_all = torch.where(take_adv.view(bshape), adv, adv_all)
        found_all |= found
        higher = loss_best > best_loss_all
        best_all = torch.where(higher.view(bshape), x_best, best_all)
        best_loss_all = torch.where(higher, loss_best, best_loss_all)

    x_adv = torch.where(found_all.view(bshape), adv_all, best_all)
    return finish(model, x, x_adv, labels, targeted, base)


SPEC = AttackSpec("apgd_ce", apgd_ce, bounded=True, white_box=True, iterative=True, fixed=("momentum", "rho"))
