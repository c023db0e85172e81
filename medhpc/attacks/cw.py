"""Carlini-Wagner L2 (Carlini & Wagner 2017) with a per-image binary search over the constant c.

Minimises ``||x' - x||² + c · max(z_y - max_{j≠y} z_j + κ, 0)`` (untargeted; targeted swaps
the roles) over ``x' = lo + (hi - lo)(tanh(w) + 1)/2``, so every iterate is in the pixel box.
CleverHans' defaults: 5 search steps of 1000 Adam iterations, lr 5e-3, c0 1e-2, κ 0.

Unlike CleverHans 4.0.0's torch code, every image has its own constant (CleverHans broadcasts
its (N, 1) constant against an (N,) loss, so each image is pushed with the batch-mean
constant), each search step starts a fresh Adam state (CleverHans carries its moments over
from one constant to the next), and failed images come back flagged. As in CleverHans, a search
step continues from the previous step's last iterate (``warm_start``; Carlini's reference code
and foolbox restart from ``x``). Adam is written out on tensors: it is elementwise, so an
image's trajectory is a function of its own loss only and its result does not depend on what
else is in the batch.

Early abort (Carlini's reference code, CleverHans' TF attack and foolbox all do it by default):
every ``abort_every`` iterations (a tenth of the steps, at least 20) each image's loss is
compared with its loss at the previous check; an image that did not improve by a relative 1e-4
is frozen for the rest of the search step (its iterate and best example stop changing), and the
search step ends once every image is frozen. The references test the batch's summed loss, so
when an image stops depends on its batch-mates; here the test is per image, so an image's
result still does not depend on its batch. Each check costs one host synchronisation (the "is
any image still improving?" read), none per iteration.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from medhpc.attacks.common import (
    AttackResult,
    Clip,
    LabelMode,
    begin,
    check_count,
    check_number,
    eot_gradient,
    finish,
    margin,
)
from medhpc.attacks.spec import AttackSpec

_UNBOUNDED = 1e10  # CleverHans' initial upper bound: "no success yet"
_ADAM_EPS = 1e-8
_BETAS = (0.9, 0.999)
_ABORT_GAIN = 0.9999  # an image goes on while its loss <= 0.9999 x its loss at the last check
_MIN_ABORT_EVERY = 20

log = logging.getLogger(__name__)


def default_abort_every(steps: int) -> int:
    """A tenth of the iterations, rounded up as foolbox 3.3.4 does, and at least 20.

    The floor is medhpc's: over fewer iterations a per-image loss rises and falls with Adam's
    oscillation around the decision boundary, so a stalled check says little about convergence
    (3 x 50 iterations, 64 images, the attack tests' trained CNN: checks every 5 iterations
    raised the mean L2 of the successes by 7 % for not one model call fewer; every 25, by
    0.04 %). At 200 iterations and more it is foolbox's interval.
    """
    return max(_MIN_ABORT_EVERY, math.ceil(steps / 10))


def cw_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    steps: int = 1000,
    search_steps: int = 5,
    lr: float = 5e-3,
    initial_const: float = 1e-2,
    confidence: float = 0.0,
    warm_start: bool = True,
    abort_early: bool = True,
    abort_every: int | None = None,
    clip: Clip | None = (0.0, 1.0),
    label_mode: LabelMode = "true",
    targeted: bool = False,
    eot: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Carlini-Wagner L2: the smallest successful perturbation found per image.

    Parameters
    ----------
    steps : Adam iterations per search step (CleverHans: 1000).
    search_steps : binary-search steps over c (CleverHans: 5). After a search step, an image
        that succeeded halves towards its lower bound (c = (lo + hi) / 2 with hi = c); one that
        failed multiplies c by 10 until a success bounds it, then bisects.
    lr : Adam learning rate in tanh space (5e-3).
    initial_const : c at the first search step (1e-2).
    confidence : κ, the logit margin required for success (0).
    warm_start : each search step continues from the previous one's last iterate with a fresh
        Adam state (CleverHans 4 keeps the iterate, and also, wrongly, the Adam state); False
        restarts every search step from ``x`` (Carlini's reference code, foolbox). At small
        budgets warm starts find more and smaller perturbations; at 1000 iterations the two
        nearly agree.
    abort_early : stop optimising an image once its loss has stopped falling (by a relative
        1e-4 between two checks) and end the search step when no image is still improving.
        On by default, as in Carlini's reference code and foolbox: at 5 x 1000 most images
        converge long before the last iteration. False runs every iteration (CleverHans 4's
        torch attack).
    abort_every : iterations between two checks; None is :func:`default_abort_every`, a tenth
        of ``steps`` and at least 20. Each check is one host synchronisation.
    clip : the pixel box; must be finite (the tanh change of variables maps onto it).
    eot : gradient (and the success check's logits) averaged over this many model draws.

    Returns
    -------
    AttackResult with, per image, the smallest-L2 successful example seen during any search
    step (the clean image where none was found), ``success``, the norms, and ``const``: the c
    under which the kept example was found (NaN where none).
    """
    steps = check_count("steps", steps)
    search_steps = check_count("search_steps", search_steps)
    lr = check_number("lr", lr, strict=True)
    initial_const = check_number("initial_const", initial_const, strict=True)
    confidence = check_number("confidence", confidence)
    if not isinstance(abort_early, bool):
        raise ValueError(f"abort_early must be True or False, got {abort_early!r}")
    every = default_abort_every(steps) if abort_every is None else check_count("abort_every", abort_every)
    s = begin(SPEC, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed,
              generator=generator, eot=eot)  # fmt: skip
    x, labels, base, eot, noisy = s.x, s.labels, s.seed, s.eot, s.stochastic
    lo, hi = s.box
    batch = x.shape[0]
    bshape = (batch,) + (1,) * (x.dim() - 1)
    scale = hi - lo
    w0 = torch.atanh(((x - lo) / scale * 2 - 1) * 0.999999)

    def to_image(w: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(w) + 1) / 2 * scale + lo

    def success_of(logits: torch.Tensor) -> torch.Tensor:
        # The label's logit is handicapped by κ (untargeted) or must win by κ (targeted).
        m = margin(logits, labels)
        return (m > confidence) if targeted else (m < -confidence)

    const = torch.full((batch,), initial_const, dtype=x.dtype, device=x.device)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, _UNBOUNDED)
    best_l2 = torch.full_like(const, math.inf)
    best_adv = x.clone()
    best_const = torch.full_like(const, math.nan)
    beta1, beta2 = _BETAS

    def hinge(logits: torch.Tensor) -> torch.Tensor:
        # max(margin of the label + κ, 0): zero once the example succeeds with margin κ.
        m = margin(logits, labels)
        return torch.clamp((-m if targeted else m) + confidence, min=0)

    w = w0.clone()
    for search in range(search_steps):
        if not warm_start:
            w = w0.clone()
        m1 = torch.zeros_like(w)
        m2 = torch.zeros_like(w)
        found = torch.zeros((batch,), dtype=torch.bool, device=x.device)
        c = const

        def weighted_hinge(logits: torch.Tensor, c: torch.Tensor = c) -> torch.Tensor:
            return c * hinge(logits)

        # Early abort: ``active`` images are still improving; ``checked`` is each image's
        # loss at the last check (set at iteration 0, compared from iteration ``every`` on).
        active = torch.ones((batch,), dtype=torch.bool, device=x.device)
        checked = torch.full_like(const, math.inf)
        for it in range(steps):
            grad, logits, weighted = eot_gradient(
                model,
                x,
                weighted_hinge,
                eot=eot,
                seed=base,
                step=search * steps + it,
                wrt=w,
                transform=to_image,
                stochastic=noisy,
            )
            # The distance term is deterministic: its gradient in closed form,
            # d||x'(w) - x||² / dw = 2 (x' - x) · (hi - lo)/2 · (1 - tanh² w).
            tanh_w = torch.tanh(w)
            image = (tanh_w + 1) / 2 * scale + lo
            diff = image - x
            grad = grad + diff * scale * (1 - tanh_w.square())
            # Book-keeping at the point the gradient was taken (before the step), as CleverHans.
            l2sq = diff.square().flatten(1).sum(1)
            ok = success_of(logits)
            if abort_early:
                # A frozen image's point was recorded when it froze; with a stochastic model
                # its later draws must not count (they depend on how long the batch runs).
                ok = ok & active
            found |= ok
            better = ok & (l2sq < best_l2)
            best_l2 = torch.where(better, l2sq, best_l2)
            best_adv = torch.where(better.view(bshape), image, best_adv)
            best_const = torch.where(better, const, best_const)
            if abort_early and it % every == 0:
                loss = l2sq + weighted
                if it > 0:
                    # foolbox's rule, per image: go on only if loss <= 0.9999 x the last check's
                    # (a NaN loss stops its image).
                    active = active & (loss <= _ABORT_GAIN * checked)
                    if not bool(active.any()):  # the check's one host synchronisation
                        log.debug("cw_l2 search step %d: every image converged after %d of %d iterations",
                                  search, it + 1, steps)  # fmt: skip
                        break
                checked = torch.where(active, loss, checked)
            # Adam, elementwise: no state is shared between images.
            t = it + 1
            m1.mul_(beta1).add_(grad, alpha=1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (m2 / (1 - beta2**t)).sqrt_().add_(_ADAM_EPS)
            stepped = w - (lr / (1 - beta1**t)) * m1 / denom
            # A frozen image keeps its iterate for the rest of the search step. Its moments go
            # on changing, unread: it never thaws, and the next search step starts Adam afresh.
            w = torch.where(active.view(bshape), stepped, w) if abort_early else stepped

        # Binary search on c, per image.
        upper = torch.where(found, torch.minimum(upper, const), upper)
        lower = torch.where(found, lower, torch.maximum(lower, const))
        bounded = upper < _UNBOUNDED / 10
        const = torch.where(bounded, (lower + upper) / 2, const * 10)

    return finish(model, x, best_adv, labels, targeted, base, const=best_const)


SPEC = AttackSpec(
    "cw_l2", cw_l2, bounded=False, white_box=True, iterative=True, finite_clip=True,
    derived={"abort_every": lambda c: default_abort_every(c["steps"])},
)  # fmt: skip
