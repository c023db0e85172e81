"""Square Attack (Andriushchenko et al. 2020): a score-based black box by random search.

The attack never sees a gradient, only the model's logits. It starts from a random point on
the ε-ball's surface (L∞: vertical stripes of ±ε; L2: the paper's "meta-pseudo-Gaussian" tiles)
and then, one model query per step, proposes changing a random square window: L∞ sets the
window to ``x ± ε`` per channel; L2 moves perturbation mass from a second window into the first
along the paper's η pattern and rescales the whole perturbation back to norm ε. A proposal is
kept when it lowers the loss (the margin ``z_y - max_{j≠y} z_j`` untargeted, the cross-entropy
to the target when targeted, as the paper). The window's side follows the paper's schedule:
``p_init`` of the pixels at first, halved at fixed fractions of the budget (AutoAttack's
``p_selection``, rescaled from 10,000 to the budget as its ``resc_schedule``).

Batched without host synchronisation: every step evaluates the whole batch; an image that is
already broken keeps its iterate and stops being charged (``AttackResult.queries``), so no
image is charged more than ``queries`` evaluations. The randomness of a step (window size and
place, the sign of each channel, the η pattern's orientation) is drawn once for the batch, as
AutoAttack's and torchattacks' PyTorch versions do for the L∞ window: each image still sees the
paper's random search, and an image's result is the same alone as in any batch, in any order.

What is charged to an image: the evaluation of the clean image (an image the model already
gets wrong is returned unchanged, as the references skip it), the starting point, and one per
proposal, while it is not yet broken. Not charged: the label resolution of label mode "pred"
and :func:`~medhpc.attacks.common.finish`'s evaluation of the result, which every attack makes.
torchattacks' ``Square(n_queries=n)`` makes the same ``n + 2`` evaluations of a robust image
(its clean evaluation, its start and ``n`` proposals); its count leaves out the clean one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from medhpc.attacks.common import (
    AttackResult,
    Clip,
    LabelMode,
    begin,
    check_count,
    clamp_box,
    decide,
    derive_seed,
    finish,
    margin,
    project_to_feasible,
)
from medhpc.attacks.spec import AttackSpec
from medhpc.models.noise import fixed_noise

log = logging.getLogger(__name__)

_TINY = 1e-12  # the reference's floor under a norm before dividing by it
#: AutoAttack's schedule: after iteration ``it`` (of 10,000) the window covers p_init / 2^k of
#: the pixels, k the number of these thresholds ``it`` has passed.
_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, it: int, iterations: int) -> float:
    """The fraction of pixels the window covers at proposal ``it`` of ``iterations``: the
    paper's schedule for 10,000 iterations, stretched to the budget."""
    it = int(it / iterations * 10000)
    return p_init / 2 ** sum(it > t for t in _SCHEDULE)


def window_side(p: float, h: int, w: int, norm: str) -> int:
    """The square's side for a fraction ``p`` of the ``h x w`` pixels (L2: odd, at least 3)."""
    s = int(round(math.sqrt(p * h * w)))
    if norm == "l2":
        s = max(s, 3)
        s += 1 - s % 2
    return max(1, min(s, h, w))


def _eta_rectangles(a: int, b: int, like: torch.Tensor) -> torch.Tensor:
    """The paper's nested rectangles: weight 1/(k+1)² on the k-th ring around the centre."""
    delta = like.new_zeros(a, b)
    ca, cb = a // 2, b // 2
    for k in range(max(ca + 1, cb + 1)):
        delta[max(ca - k, 0) : min(ca - k + 2 * k + 1, a), max(cb - k, 0) : min(cb - k + 2 * k + 1, b)] += (
            1.0 / (k + 1) ** 2
        )
    return delta / delta.square().sum().sqrt()


def eta(s: int, like: torch.Tensor) -> torch.Tensor:
    """The L2 window pattern (s, s): two halves of opposite sign, unit L2 norm (the paper's η)."""
    delta = like.new_zeros(s, s)
    delta[: s // 2] = _eta_rectangles(s // 2, s, like)
    delta[s // 2 :] = -_eta_rectangles(s - s // 2, s, like)
    return delta / delta.square().sum().sqrt()


def _l2(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return t.square().sum(dim=dims, keepdim=True).sqrt()


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    norm: str = "linf",
    queries: int = 1000,
    p_init: float = 0.8,
    clip: Clip | None = (0.0, 1.0),
    label_mode: LabelMode = "true",
    targeted: bool = False,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Square Attack, L∞ or L2, untargeted or targeted, batched over (B, C, H, W) images.

    Parameters
    ----------
    eps : radius of the ε-ball in ``norm``.
    norm : "linf" (stripes start, ±ε windows) or "l2" (η tiles, mass moved between windows).
    queries : model evaluations charged per image, all included (clean, start, proposals).
        1000 by default: the order of the paper's SPSA row (5 steps x 256 probes + 6 = 1286
        per image), so the two black boxes cost alike; AutoAttack's 5000 is a config away.
    p_init : fraction of the pixels the first windows cover (the paper's 0.8).
    seed, generator : every draw (start, windows, signs) and a stochastic model's noise, which
        each query ``q`` pins with ``fixed_noise(model, derive_seed(seed, 0x5C, q))``.

    Returns
    -------
    AttackResult with each image's best iterate and ``queries`` (int64, per image).
    """
    queries = check_count("queries", queries)
    if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
        raise ValueError(f"p_init must be a number in (0, 1], got {p_init!r}")
    if isinstance(x, torch.Tensor) and x.dim() != 4:
        raise ValueError(f"x must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    s = begin(SPEC, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed,
              generator=generator, eps=eps, norm=norm)  # fmt: skip
    assert s.eps is not None and s.norm is not None
    x, eps, norm_, box, labels, base = s.x, s.eps, s.norm, s.box, s.labels, s.seed
    batch, c, h, w = x.shape
    bshape = (batch, 1, 1, 1)
    iterations = max(queries - 2, 0)

    # Every draw, made before the loop: window sides and places and η's orientation on the host
    # (Python ints, so slicing reads no tensor), signs on the device from the attack's generator.
    host = random.Random(derive_seed(base, 0x5A))
    sides = [window_side(p_selection(p_init, i, iterations), h, w, norm_) for i in range(iterations)]
    places = [[host.randrange(max(h - k, 1)), host.randrange(max(w - k, 1))] for k in sides]
    flips: list[bool] = []
    patterns: dict[int, torch.Tensor] = {}
    if norm_ == "l2":
        places = [
            p + [host.randrange(max(h - k, 1)), host.randrange(max(w - k, 1))]
            for p, k in zip(places, sides, strict=True)
        ]
        flips = [host.random() > 0.5 for _ in sides]
        patterns = {k: eta(k, x) for k in set(sides)}
    gen = s.generator

    def signs(*shape: int) -> torch.Tensor:
        bits = torch.randint(0, 2, shape, generator=gen, device=x.device)
        return (2 * bits - 1).to(x.dtype)

    step_signs = signs(max(iterations, 1), c)

    def evaluate(x_eval: torch.Tensor, query: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Query ``query`` (0: clean, 1: start, 2 + i: proposal i) of the batch: (loss to
        minimise, broken) per image. A stochastic model's noise is pinned per query."""
        noise = fixed_noise(model, derive_seed(base, 0x5C, query)) if s.stochastic else contextlib.nullcontext()
        with torch.no_grad(), noise:
            logits = model(x_eval)
        loss = F.cross_entropy(logits, labels, reduction="none") if targeted else margin(logits, labels)
        return loss, decide(logits, labels, targeted)[1]

    # Query 1, the clean image: an image already broken is returned as it is.
    _, broken = evaluate(x, 0)
    charged = torch.ones(batch, dtype=torch.long, device=x.device)
    if queries == 1:
        return finish(model, x, x, labels, targeted, base, queries=charged)

    # Query 2, the start on the ball's surface.
    if norm_ == "linf":
        start = clamp_box(x + eps * signs(c, w).view(1, c, 1, w), box)
    else:
        # A grid of the paper's tiles of side h // 5, each η (randomly transposed) with a random
        # sign per channel; only tiles that fit (the reference overruns the edge when h // tile > 5).
        tile = h // 5
        first = (h - 5 * tile) // 2
        init = torch.zeros_like(x)
        if tile > 0:
            rows, cols = (h - first) // tile, (w - first) // tile
            tile_signs = signs(rows, cols, c)
            pattern = eta(tile, x)
            for i in range(rows):
                for j in range(cols):
                    vh, vw = first + i * tile, first + j * tile
                    window = (slice(None), slice(None), slice(vh, vh + tile), slice(vw, vw + tile))
                    oriented = pattern.t() if host.random() > 0.5 else pattern  # η's own transpose
                    init[window] += oriented * tile_signs[i, j].view(1, c, 1, 1)
        start = clamp_box(x + eps * init / (_l2(init, (1, 2, 3)) + _TINY), box)
    best_loss, ok = evaluate(start, 1)
    active = ~broken
    best = torch.where(active.view(bshape), start, x)
    broken = broken | ok
    charged += active.long()

    with torch.no_grad():
        for i in range(iterations):
            k = sides[i]
            vh, vw = places[i][0], places[i][1]
            win = (slice(None), slice(None), slice(vh, vh + k), slice(vw, vw + k))
            if norm_ == "linf":
                candidate = best.clone()
                candidate[win] = clamp_box(x[win] + eps * step_signs[i].view(1, c, 1, 1), box)
            else:
                vh2, vw2 = places[i][2], places[i][3]
                win2 = (slice(None), slice(None), slice(vh2, vh2 + k), slice(vw2, vw2 + k))
                delta = best - x
                mask = torch.zeros_like(x[:1])
                mask[win] = 1.0
                mask[win2] = 1.0
                # Mass the two windows hold now, plus what the ball has left, goes to window 1.
                room = (eps**2 - _l2(delta, (1, 2, 3)).square()).clamp_min(0.0) / c
                mass = _l2(delta * mask, (1, 2, 3)).square()
                old = delta[win]
                pattern = patterns[k].t() if flips[i] else patterns[k]
                new = pattern * step_signs[i].view(1, c, 1, 1) + old / (_l2(old, (2, 3)) + _TINY)
                new = new / (_l2(new, (2, 3)) + _TINY) * (room + mass).sqrt()
                delta[win2] = 0.0
                delta[win] = new
                candidate = clamp_box(x + eps * delta / (_l2(delta, (1, 2, 3)) + _TINY), box)
            loss, ok = evaluate(candidate, 2 + i)
            active = ~broken
            accept = active & ((loss < best_loss) | ok)
            best = torch.where(accept.view(bshape), candidate, best)
            best_loss = torch.where(accept, loss, best_loss)
            broken = broken | (active & ok)
            charged += active.long()

    x_adv = project_to_feasible(x, best, norm_, eps, box)  # float rounding only
    return finish(model, x, x_adv, labels, targeted, base, queries=charged)


SPEC = AttackSpec("square", square, bounded=True, white_box=False, iterative=True)
