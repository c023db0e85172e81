"""FAB, the fast adaptive boundary attack (Croce & Hein 2020): minimally distorted examples.

Each step linearises the decision boundary between the attacked class y and the closest other
class j (closest in the linear model: ``|z_j - z_y| / ||∇(z_j - z_y)||_*``, the dual norm),
projects both the current iterate and the original image onto that hyperplane intersected with
the pixel box, and moves to a convex combination of the two projections, overshooting by η:

    x' = clip((1 - α)(x_k + η δ_k) + α (x_0 + η δ_0)),   α = min(|δ_k| / (|δ_k| + |δ_0|), α_max)

so the iterate is pulled towards the original point. When x' is adversarial it is recorded if it
is the smallest found so far and the iterate steps back towards x_0: x_0 + β (x' - x_0).

Restart 0 starts at x_0 (as the reference implementations do); each later restart starts at a
random point on the sphere of radius ``min(best norm so far, ε) / 2`` around x_0 (the original
FAB code's radius; AutoAttack's uses ε / 2), clipped to the box.

Gradients: one forward and C - 1 backward passes per iterate, one per other class, batched over
images (class ``(y + k) mod C`` for k = 1..C-1, so a 2-class model costs one backward). The
popular implementations take C backward passes, one of which (j = y) they discard.

The projection onto {w·(t + d) = b} ∩ box is solved exactly for L∞ and L2 without a loop: both
reduce to finding λ ≥ 0 with ``Σ_i a_i min(λ, ρ_i) = c`` (a piecewise-linear increasing
function of λ), which a sort and two cumulative sums answer for all images at once.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from medhpc.attacks.common import (
    AttackResult,
    Clip,
    LabelMode,
    Norm,
    begin,
    check_count,
    check_number,
    clamp_box,
    derive_seed,
    finish,
)
from medhpc.attacks.spec import AttackSpec
from medhpc.models.noise import fixed_noise

_TINY = 1e-12  # the references' floor under a dual norm before dividing by it
_NORM_FLOOR = 1e-8  # the references' floor under a projection's length in α


# ---------------------------------------------------------------------------------------------
# Projection onto a hyperplane intersected with the pixel box


def _solve_threshold(a: torch.Tensor, rho: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest λ ≥ 0 with ``g(λ) = Σ_i a_i min(λ, ρ_i) = c`` (a, ρ ≥ 0; c ≥ 0).

    g is concave, piecewise linear and non-decreasing with breakpoints at the ρ_i. Sorted by ρ,
    g at the k-th breakpoint is (sum of a·ρ over the first k) + ρ_(k) · (sum of a after k); the
    number of breakpoints where g < c says which segment holds the solution, where g is linear.
    Returns +inf where ``c > g(∞)`` (the box does not reach the hyperplane).
    """
    rho_s, order = torch.sort(rho, dim=1)
    a_s = a.gather(1, order)
    below = torch.cumsum(a_s * rho_s, dim=1)  # Σ_{j<=k} a_j ρ_j
    total = a_s.sum(1, keepdim=True)
    above = total - torch.cumsum(a_s, dim=1)  # Σ_{j>k} a_j
    g_at = below + rho_s * above
    k = (g_at < c.unsqueeze(1)).sum(1, keepdim=True)  # 0..D
    zero = torch.zeros_like(total)
    below_pad = torch.cat((zero, below), 1).gather(1, k).squeeze(1)
    slope = torch.cat((total, above), 1).gather(1, k).squeeze(1)
    lam = (c - below_pad) / slope.clamp_min(_TINY)
    lam = torch.where(c <= 0, torch.zeros_like(lam), lam)
    return torch.where(k.squeeze(1) >= a.shape[1], torch.full_like(lam, math.inf), lam)


def project_hyperplane_box(t: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: Norm, box: Clip) -> torch.Tensor:
    """The smallest step d (in ``norm``) with ``c + w·d = 0`` and ``t + d`` in the box.

    Parameters
    ----------
    t : (N, D) points in the box.
    w : (N, D) hyperplane normals.
    c : (N,) the linear function's value at t (the hyperplane is where it is 0).
    norm : "linf" or "l2".
    box : finite (lo, hi).

    Where the box does not reach the hyperplane, d goes to the box's corner that gets closest
    (the references do the same). Coordinates with w = 0 do not move.

    Maths: with the sign of (w, c) flipped so that c ≥ 0, the step must lower w·t by c. Let
    r_i be the room coordinate i has in the lowering direction (t_i - lo where w_i > 0,
    hi - t_i where w_i < 0). L∞: at radius λ coordinate i lowers by |w_i| min(λ, r_i), so
    λ solves ``Σ |w_i| min(λ, r_i) = c`` and d_i = -sign(w_i) min(λ, r_i). L2 (KKT): d_i =
    clip(-μ w_i) into the box, lowering by w_i² min(μ, r_i / |w_i|); μ solves
    ``Σ w_i² min(μ, r_i/|w_i|) = c`` and d_i = -w_i min(μ, r_i / |w_i|).
    """
    lo, hi = box
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w = w * flip.unsqueeze(1)
    c = c * flip
    room = torch.where(w > 0, t - lo, torch.where(w < 0, hi - t, torch.zeros_like(t))).clamp_min(0)
    mag = w.abs()
    if norm == "linf":
        lam = _solve_threshold(mag, room, c)
        d = -torch.sign(w) * torch.minimum(lam.unsqueeze(1), room)
    else:
        rho = torch.where(mag > 0, room / mag.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(room))
        mu = _solve_threshold(mag.square(), rho, c)
        d = -w * torch.minimum(mu.unsqueeze(1), rho)
    return torch.minimum(torch.maximum(d, lo - t), hi - t)  # rounding must not leave the box


# ---------------------------------------------------------------------------------------------
# Model calls


def _norm_of(d: torch.Tensor, norm: Norm) -> torch.Tensor:
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _noise(model: nn.Module, seed: int, stochastic: bool) -> contextlib.AbstractContextManager[None]:
    return fixed_noise(model, seed) if stochastic else contextlib.nullcontext()


def boundary_linearisation(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    eot: int,
    seed: int,
    step: int,
    stochastic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at ``x`` and, for every other class, ``z_j - z_y`` and its gradient.

    Class ``(y + k) mod C`` sits in column k - 1 (k = 1..C-1): one backward pass per column,
    batched over images (each image's gradient is its own: the outputs' gradients are one-hot
    per row). A stochastic model's logits and gradients are averaged over ``eot`` draws named
    ``derive_seed(seed, step, m)``.

    Returns
    -------
    (logits (B, C), diff (B, C-1), grad (B, C-1, D)), detached.
    """
    draws = eot if stochastic else 1
    var = x.detach().requires_grad_(True)
    logit_sum: torch.Tensor | None = None
    grad_sum: torch.Tensor | None = None
    for m in range(draws):
        with torch.enable_grad(), _noise(model, derive_seed(seed, step, m), stochastic):
            z = model(var)
            classes = z.shape[1]
            if classes < 2:
                raise ValueError(f"FAB needs a model with >= 2 classes, got {classes} logits")
            cols = torch.arange(classes, device=z.device)
            own = (cols == labels.unsqueeze(1)).to(z.dtype)
            grads = []
            for k in range(1, classes):
                other = (cols == ((labels + k) % classes).unsqueeze(1)).to(z.dtype)
                (g,) = torch.autograd.grad(z, var, grad_outputs=other - own, retain_graph=k < classes - 1)
                grads.append(g.flatten(1))
        stacked = torch.stack(grads, 1)
        zd = z.detach()
        logit_sum = zd if logit_sum is None else logit_sum + zd
        grad_sum = stacked if grad_sum is None else grad_sum + stacked
    assert logit_sum is not None and grad_sum is not None
    logits, grad = (logit_sum, grad_sum) if draws == 1 else (logit_sum / draws, grad_sum / draws)
    classes = logits.shape[1]
    others = (labels.unsqueeze(1) + torch.arange(1, classes, device=x.device)) % classes
    diff = logits.gather(1, others) - logits.gather(1, labels.unsqueeze(1))
    return logits, diff, grad


def _mean_logits(model: nn.Module, x: torch.Tensor, *, eot: int, seed: int, stochastic: bool) -> torch.Tensor:
    draws = eot if stochastic else 1
    total: torch.Tensor | None = None
    with torch.no_grad():
        for m in range(draws):
            with _noise(model, derive_seed(seed, m), stochastic):
                z = model(x)
            total = z if total is None else total + z
    assert total is not None
    return total if draws == 1 else total / draws


# ---------------------------------------------------------------------------------------------
# The attack


def fab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    clip: Clip | None = (0.0, 1.0),
    label_mode: LabelMode = "true",
    targeted: bool = False,
    eot: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """FAB (untargeted), L∞ or L2: the smallest adversarial perturbation found per image.

    Parameters
    ----------
    eps : the budget. ``x_adv`` is the smallest successful example found if its norm is at
        most ε, else the clean image; ``min_norm`` reports the smallest norm found whatever ε.
        ε also sets the radius of the random restarts.
    norm : "linf" or "l2", the norm minimised.
    steps : iterations per restart. 100, as AutoAttack runs FAB (its class default of 10 is
        a constructor default, not what the standard evaluation uses; Croce & Hein report
        100 as well).
    restarts : runs per image; the first from x, the others from random starts.
    alpha_max, eta, beta : the paper's bias towards x_0 (0.1), overshoot (1.05) and backward
        step after a success (0.9); fixed, as in every published evaluation.
    eot : stochastic models: logits and gradients averaged over this many draws per iterate.

    Returns
    -------
    AttackResult with ``min_norm`` (inf where no adversarial example was found). On a
    deterministic model ``success`` is exactly ``min_norm <= eps``. On a stochastic one an
    example counts as found when the mean logits over ``eot`` draws misclassify it, and
    ``success`` is then judged again on one fresh draw, so the two can differ near the boundary.

    Notes
    -----
    With one restart an image's result does not depend on the rest of the batch. Later
    restarts draw their random starts for the whole batch from one generator (as the other
    attacks' random starts), so a start depends on the image's position in the batch.
    """
    if targeted:
        raise ValueError("targeted must be False: medhpc's FAB is the untargeted attack")
    steps = check_count("steps", steps)
    restarts = check_count("restarts", restarts)
    alpha_max = check_number("alpha_max", alpha_max)
    if alpha_max > 1:
        raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")
    eta = check_number("eta", eta, strict=True)
    beta = check_number("beta", beta, strict=True)
    if beta > 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    s = begin(SPEC, model, x, y, clip=clip, label_mode=label_mode, targeted=False, seed=seed,
              generator=generator, eps=eps, norm=norm, eot=eot)  # fmt: skip
    assert s.eps is not None and s.norm is not None
    x0, labels, box, gen, base = s.x, s.labels, s.box, s.generator, s.seed
    eps_, norm_, eot_, noisy = s.eps, s.norm, s.eot, s.stochastic
    n = x0.shape[0]
    bshape = (n,) + (1,) * (x0.dim() - 1)
    flat0 = x0.flatten(1)
    dim = flat0.shape[1]
    lo, hi = box
    diameter = (hi - lo) * (1.0 if norm_ == "linf" else math.sqrt(dim))

    best = torch.full((n,), math.inf, dtype=torch.float64, device=x0.device)
    best_x = x0.clone()

    def record(candidate: torch.Tensor, fooled: torch.Tensor) -> None:
        nonlocal best, best_x
        size = _norm_of(candidate.double() - x0.double(), norm_)
        better = fooled & (size < best)
        best = torch.where(better, size, best)
        best_x = torch.where(better.view(bshape), candidate, best_x)

    for restart in range(restarts):
        run_seed = derive_seed(base, restart)
        if restart == 0:
            x1 = x0.clone()
        else:
            if norm_ == "linf":
                u = 2 * torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) - 1
            else:
                u = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
            u = u / _norm_of(u, norm_).clamp_min(_TINY).view(bshape)
            radius = 0.5 * best.clamp(max=min(eps_, diameter)).to(x0.dtype)
            x1 = clamp_box(x0 + radius.view(bshape) * u, box)

        for i in range(steps):
            logits, diff, grad = boundary_linearisation(
                model, x1, labels, eot=eot_, seed=run_seed, step=i, stochastic=noisy
            )
            # The iterate itself (the start, or a point after a backward step) may be adversarial.
            record(x1, logits.argmax(1) != labels)
            dual = grad.abs().sum(-1) if norm_ == "linf" else grad.norm(dim=-1)
            closest = (diff.abs() / (dual + _TINY)).argmin(1)
            w = grad.gather(1, closest.view(n, 1, 1).expand(n, 1, dim)).squeeze(1)
            f = diff.gather(1, closest.view(n, 1)).squeeze(1)
            flat1 = x1.flatten(1)
            # Both projections in one call: the iterate's and the original point's.
            points = torch.cat((flat1, flat0), 0)
            values = torch.cat((f, f + (w * (flat0 - flat1)).sum(1)), 0)
            d = project_hyperplane_box(points, torch.cat((w, w), 0), values, norm_, box)
            size = _norm_of(d, norm_).clamp_min(_NORM_FLOOR)
            d1, d0 = d[:n].view_as(x1), d[n:].view_as(x1)
            alpha = (size[:n] / (size[:n] + size[n:])).clamp(0.0, alpha_max).view(bshape)
            x1 = clamp_box((1 - alpha) * (x1 + eta * d1) + alpha * (x0 + eta * d0), box)

            check = _mean_logits(model, x1, eot=eot_, seed=derive_seed(run_seed, 0xC4EC, i), stochastic=noisy)
            fooled = check.argmax(1) != labels
            record(x1, fooled)
            x1 = torch.where(fooled.view(bshape), x0 + beta * (x1 - x0), x1)

    min_norm = best.to(x0.dtype)
    within = min_norm <= eps_
    x_adv = torch.where(within.view(bshape), best_x, x0)
    return finish(model, x0, x_adv, labels, False, base, min_norm=min_norm)


SPEC = AttackSpec(
    "fab", fab, bounded=True, white_box=True, iterative=True, finite_clip=True,
    fixed=("alpha_max", "eta", "beta"),
)  # fmt: skip
