"""Auto-PGD (Croce & Hein 2020): PGD with momentum and a step size that adapts per image, on the
cross-entropy, a scale-free margin that works on 2 classes, or the paper's DLR loss.

Two registered attacks share one implementation:

* ``apgd_ce``: the cross-entropy form, with the parameters it has always had (no ``loss``), so
  existing configs keep their hashes and results;
* ``apgd``: the same algorithm with ``loss`` one of ``"ce"``, ``"margin"`` (the default) or
  ``"dlr"``; ``apgd(loss="ce")`` is ``apgd_ce`` bit for bit for the same seed.

Losses (per image, the quantity the attack raises; z are the logits, y the label):

* ``ce``: the cross-entropy. On an over-confident model float32's softmax saturates: p_y rounds
  to 1, the gradient is exactly zero and the attack never moves (accuracy under attack then
  looks like robustness).
* ``margin``: ``-(z_y - max_{j≠y} z_j) / s`` untargeted, ``(z_t - max_{j≠t} z_j) / s`` targeted,
  with ``s = max(max_j z_j(x) - min_j z_j(x), 1e-12)`` taken once per image at the **clean**
  image x and detached. The margin does not saturate (its gradient is the difference of two
  logit gradients), and the ratio is unchanged when the model's logits become ``a z + b``
  (a > 0): the difference of two logits ignores b, and the clean logit range scales with a.
  Why the clean point: DLR divides by a spread of the current iterate's logits, but on 2
  classes every function of (z_1, z_2) that ignores a shift and a positive scale of the
  logits depends only on sign(z_1 - z_2), so it is piecewise constant with zero gradient. A
  per-image constant keeps the margin's gradient direction and every comparison of an image's
  losses (the step-size checkpoints, the best point, the merge of restarts, which all compare
  an image with itself), so the iterates are the raw margin's (to float rounding); what the
  normaliser adds is a loss value that means the same on any model: on 2 classes -1 at a
  correctly classified clean image (its whole margin left), 0 on the decision boundary. The
  clean range, not the clean margin, so that it needs no label and stays positive where the
  clean image is already misclassified. The floor (DLR's 1e-12, at least the dtype's smallest
  normal) only matters for an image whose clean logits are all equal; it changes no iterate.
  It costs one forward of the clean batch per call.
* ``dlr``: the paper's Difference of Logits Ratio for ≥ 3 classes, ``-(z_y - max_{j≠y} z_j) /
  (z_π1 - z_π3 + 1e-12)`` with z_π the sorted logits of the current iterate; targeted (≥ 4
  classes) ``(z_t - max_{j≠t} z_j) / (z_π1 - (z_π3 + z_π4) / 2 + 1e-12)``. AutoAttack's targeted
  numerator is ``z_t - z_y`` with the true class y; a medhpc targeted attack receives only the
  targets, so the best other class stands in for y (the same where y is the runner-up, and
  the harder goal otherwise: the target must beat every class). Fewer classes: a ValueError
  that names the class count (read from the logits' shape: no host synchronisation).

Targeted on 2 classes is untargeted: with targets t = 1 - y the targeted margin
``z_t - z_y`` is the untargeted ascent loss ``-(z_y - z_t)``, "pred == t" is "pred != y", and
the normaliser ignores labels, so the images are the same (a test shows it).

Algorithm (Croce & Hein 2020, Alg. 1, with the published implementation's integer schedule):
x1 = P(x0 + η∇); then x_{k+1} = P(x_k + α(z_{k+1} − x_k) + (1 − α)(x_k − x_{k−1})) with
z_{k+1} = P(x_k + η·dir(∇f(x_k))) and momentum α = 0.75. Checkpoints: the first after
⌈0.22·N⌉ iterations, each next interval 0.03·N shorter, at least 0.06·N. At a checkpoint an
image's step is halved if (1) its loss rose in at most ρ = 75 % of the interval's iterations,
or (2) its step was not halved at the previous checkpoint and its best loss has not improved
since. Every per-image decision is a ``torch.where``: no host synchronisation in the loop. The
popular implementations' DLR indexes the third-largest logit and fails on 2 classes, and their
index bookkeeping breaks on batches of one; neither happens here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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
    margin,
    model_logits,
    project,
    project_to_feasible,
    random_start,
)
from medhpc.attacks.spec import AttackSpec

Loss = Literal["ce", "margin", "dlr"]
LOSSES: tuple[str, ...] = ("ce", "margin", "dlr")
_DLR_TINY = 1e-12  # AutoAttack's floor under DLR's denominator; also the margin scale's floor
_SCALE_SEED = 0x5CA1E  # the clean forward of the margin's normaliser (a stochastic model's draw)


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


# ---------------------------------------------------------------------------------------------
# Losses: per image (B,), to raise.


def margin_scale(clean_logits: torch.Tensor) -> torch.Tensor:
    """The margin loss's per-image normaliser: the clean logits' range ``max - min``, floored,
    detached (see the module docstring for why the clean point and not the iterate)."""
    z = clean_logits.detach()
    floor = max(_DLR_TINY, torch.finfo(z.dtype).tiny)
    return (z.amax(-1) - z.amin(-1)).clamp_min(floor)


def margin_ascent(logits: torch.Tensor, labels: torch.Tensor, targeted: bool, scale: torch.Tensor) -> torch.Tensor:
    """``-(z_y - max_{j≠y} z_j) / s`` (untargeted) or ``(z_t - max_{j≠t} z_j) / s`` (targeted):
    positive once the attack succeeds, invariant to ``z -> a z + b`` with ``s`` from
    :func:`margin_scale` of the same model."""
    m = margin(logits, labels) / scale
    return m if targeted else -m


def _check_classes(logits: torch.Tensor, targeted: bool) -> None:
    need = 4 if targeted else 3
    classes = logits.shape[-1]
    if classes < need:
        kind = "targeted DLR" if targeted else "DLR"
        raise ValueError(
            f"loss 'dlr' needs at least {need} classes for {kind}, the model has {classes}: "
            "use loss: margin (scale-free, any number of classes)"
        )


def dlr_ascent(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Croce & Hein's Difference of Logits Ratio, to raise (untargeted ≥ 3 classes, targeted ≥ 4;
    a ValueError naming the class count otherwise)."""
    _check_classes(logits, targeted)
    top = logits.topk(4 if targeted else 3, dim=-1).values
    spread = top[..., 0] - (0.5 * (top[..., 2] + top[..., 3]) if targeted else top[..., 2])
    m = margin(logits, labels) / (spread + _DLR_TINY)
    return m if targeted else -m


def _loss_fn(
    loss: str,
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    targeted: bool,
    seed: int,
) -> Callable[[torch.Tensor], torch.Tensor]:
    if loss == "ce":
        return lambda logits: ce_ascent(logits, labels, targeted)
    if loss == "dlr":
        return lambda logits: dlr_ascent(logits, labels, targeted)
    scale = margin_scale(model_logits(model, x, derive_seed(seed, _SCALE_SEED)))
    return lambda logits: margin_ascent(logits, labels, targeted, scale)


def _check_loss(loss: object) -> str:
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    return loss


# ---------------------------------------------------------------------------------------------
# The algorithm, shared by both registered forms


def _apgd(
    spec: AttackSpec,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    loss: str,
    eps: float,
    steps: int,
    norm: str,
    restarts: int,
    random_init: bool,
    momentum: float,
    rho: float,
    clip: Clip | None,
    label_mode: LabelMode,
    targeted: bool,
    eot: int,
    seed: int,
    generator: torch.Generator | None,
) -> AttackResult:
    steps = check_count("steps", steps)
    restarts = check_count("restarts", restarts)
    momentum = check_number("momentum", momentum)
    if momentum > 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    rho = check_number("rho", rho)
    if rho > 1:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    loss = _check_loss(loss)
    s = begin(spec, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed,
              generator=generator, eps=eps, norm=norm, eot=eot)  # fmt: skip
    assert s.eps is not None and s.norm is not None
    x, eps, norm_, box, labels, gen, base, eot, noisy = (
        s.x,
        s.eps,
        s.norm,
        s.box,
        s.labels,
        s.generator,
        s.seed,
        s.eot,
        s.stochastic,
    )
    loss_fn = _loss_fn(loss, model, x, labels, targeted, base)

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
        grad, logits, loss_cur = eot_gradient(model, x_cur, loss_fn, eot=eot, seed=run_seed, step=0, stochastic=noisy)
        found = decide(logits, labels, targeted)[1]
        adv = x_cur.clone()
        x_best, grad_best, loss_best = x_cur.clone(), grad.clone(), loss_cur.clone()
        x_prev = x_cur.clone()
        prev_loss = loss_cur
        step = torch.full((x.shape[0],), 2.0 * eps, dtype=x.dtype, device=x.device)
        rises = torch.zeros((x.shape[0],), dtype=x.dtype, device=x.device)
        reduced_last = torch.ones((x.shape[0],), dtype=torch.bool, device=x.device)
        loss_best_last = loss_best.clone()
        since_check = 0

        for i in range(steps):
            a = 1.0 if i == 0 else momentum
            z = project_to_feasible(x, x_cur + step.view(bshape) * ascent_direction(grad, norm_), norm_, eps, box)
            x_new = project_to_feasible(x, x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), norm_, eps, box)
            x_prev = x_cur
            grad, logits, loss_cur = eot_gradient(
                model, x_new, loss_fn, eot=eot, seed=run_seed, step=i + 1, stochastic=noisy
            )
            fooled = decide(logits, labels, targeted)[1]
            adv = torch.where((fooled & ~found).view(bshape), x_new, adv)  # keep the first success
            found |= fooled
            improved = loss_cur > loss_best
            x_best = torch.where(improved.view(bshape), x_new, x_best)
            grad_best = torch.where(improved.view(bshape), grad, grad_best)
            loss_best = torch.where(improved, loss_cur, loss_best)
            rises += (loss_cur > prev_loss).to(rises.dtype)
            prev_loss = loss_cur
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


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    loss: Loss = "margin",
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
    """Auto-PGD on a chosen loss, L∞ or L2.

    Parameters
    ----------
    eps : radius of the ε-ball.
    loss : ``"margin"`` (default: scale-free, any number of classes, does not saturate),
        ``"ce"`` (exactly :func:`apgd_ce`) or ``"dlr"`` (≥ 3 classes, targeted ≥ 4); see the
        module docstring. On 2 classes a targeted attack is the untargeted one.
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
    return _apgd(SPEC_APGD, model, x, y, loss=loss, eps=eps, steps=steps, norm=norm, restarts=restarts,
                 random_init=random_init, momentum=momentum, rho=rho, clip=clip, label_mode=label_mode,
                 targeted=targeted, eot=eot, seed=seed, generator=generator)  # fmt: skip


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
    """Auto-PGD on the cross-entropy, L∞ or L2: :func:`apgd` with ``loss="ce"``, registered on its
    own so that configs written before ``apgd`` keep their parameters and hashes.

    Parameters as :func:`apgd` (no ``loss``).
    """
    return _apgd(SPEC, model, x, y, loss="ce", eps=eps, steps=steps, norm=norm, restarts=restarts,
                 random_init=random_init, momentum=momentum, rho=rho, clip=clip, label_mode=label_mode,
                 targeted=targeted, eot=eot, seed=seed, generator=generator)  # fmt: skip


# Two attacks, one module: ``SPEC`` stays apgd_ce's (its registration line is unchanged).
SPEC = AttackSpec("apgd_ce", apgd_ce, bounded=True, white_box=True, iterative=True, fixed=("momentum", "rho"))
SPEC_APGD = AttackSpec("apgd", apgd, bounded=True, white_box=True, iterative=True, fixed=("momentum", "rho"))
