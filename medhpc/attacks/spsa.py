"""SPSA (Uesato et al. 2018): a gradient-free attack from antithetic finite differences.

Each iteration estimates the gradient of CleverHans' margin loss at the *current iterate*
from ``samples`` Rademacher directions v, each probed as the pair ``clip(x ± δv)``, then takes
an Adam step and projects onto the ε-ball and the pixel range.

Semantics follow CleverHans 4.0.0's ``spsa`` (lr 0.01, δ 0.01, ``spsa_samples`` 128, per-image
Adam, margin loss ``z_y - max_{j≠y} z_j`` minimised) with these differences: the estimate is
taken at the iterate (CleverHans evaluates the model at ``2x + δv``, its open issue 1249); the
start is the clean image, as in Uesato et al.'s Algorithm 1 and torchattacks (CleverHans starts
uniformly in the ε-cube: ``random_init=True``; with only 5 steps of 0.01 that noise is mostly
left in place and weakens the attack); probes are clipped to the pixel range; each image keeps
its lowest-loss iterate (one extra forward of the B iterates per step, 1/256 of the probes),
so an iterate that fooled the model is not given up; and all images run together instead of
one at a time.

``samples`` counts directions, i.e. ± *pairs*, as CleverHans' ``spsa_samples`` does (it draws
128 directions and concatenates their negatives): 128 samples = 256 model evaluations per
image per iteration. The probes are written by the fused ``medhpc.ops.spsa_perturb`` straight
into a reused input buffer, ``chunk`` directions at a time so that one model call holds at most
``max_batch_bytes`` of probe images, and ``medhpc.ops.spsa_reduce`` folds each chunk's losses
back into the estimate; the directions are regenerated from (seed, iteration), never stored,
and chunks compose, so the result does not depend on the memory budget.

Image ``b`` of the batch draws its directions from Philox stream position ``b``: the same
images in another order get other directions (each run is still reproducible from its seed).
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
    check_clip,
    check_count,
    check_number,
    clamp_box,
    derive_seed,
    finish,
    margin_descent,
    project,
    random_start,
)
from medhpc.attacks.spec import AttackSpec
from medhpc.models.noise import fixed_noise
from medhpc.ops import spsa_perturb, spsa_reduce

log = logging.getLogger(__name__)

_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8  # torch.optim.Adam's, which CleverHans uses
_MAX_OFFSET = 2**32  # the SPSA kernels' Philox offset range


#: Probe bytes per model call when none is given: small on the CPU, where a ResNet50 forward
#: over a few hundred 32 px probes runs about 2x faster per image in batches of ~64-128 than of
#: 1000 (its activations then stay in cache); large on a GPU, which needs big batches to fill.
DEFAULT_BATCH_BYTES = {"cpu": 2**21, "cuda": 2**28}


def default_batch_bytes(device: torch.device) -> int:
    return DEFAULT_BATCH_BYTES.get(device.type, 2**28)


def spsa_chunk(batch: int, image_numel: int, element_size: int, samples: int, max_batch_bytes: int) -> int:
    """Directions per model call so the probe batch stays within ``max_batch_bytes``.

    At least one direction (2·B probes) per call: the budget cannot split images apart.
    """
    per_direction = 2 * batch * image_numel * element_size
    return max(1, min(samples, max_batch_bytes // per_direction))


def spsa_gradient(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    delta: float,
    samples: int,
    seed: int,
    offset: int = 0,
    targeted: bool = False,
    clip: Clip | None = (0.0, 1.0),
    max_batch_bytes: int | None = None,
    common_random_numbers: bool = True,
    noise_seed: int | None = None,
    storage: torch.Tensor | None = None,
) -> torch.Tensor:
    """SPSA estimate of the margin loss's gradient at ``x`` (per image), from ``samples``
    antithetic pairs of probes ``clip(x ± δv)``.

    ``(seed, offset)`` name the Rademacher directions (use a fresh offset per iteration) and,
    unless ``noise_seed`` names them apart, a stochastic model's draws. With
    ``common_random_numbers`` both probes of a pair see one model draw; without, every probe
    draws its own (only to show what the pairing buys).
    ``storage`` is a reusable flat buffer of at least ``B · 2 · chunk · numel`` elements.
    Returns the mean over directions of ``(L(x + δv) − L(x − δv)) / (2δ) · v``, shape of ``x``.
    """
    box = check_clip(clip)
    if max_batch_bytes is None:
        max_batch_bytes = default_batch_bytes(x.device)
    batch, image_shape = x.shape[0], tuple(x.shape[1:])
    numel = x[0].numel()
    chunk = spsa_chunk(batch, numel, x.element_size(), samples, max_batch_bytes)
    if storage is None or storage.numel() < batch * 2 * chunk * numel:
        storage = x.new_empty(batch * 2 * chunk * numel)
    dir_seed = derive_seed(seed, 0x5B5A)
    noise = seed if noise_seed is None else noise_seed
    grad = torch.zeros_like(x)
    with torch.no_grad():
        for first in range(0, samples, chunk):
            count = min(chunk, samples - first)
            # Each chunk views a contiguous (B, 2*count, ...) prefix of the flat buffer.
            buf = storage[: batch * 2 * count * numel].view(batch, 2 * count, *image_shape)
            spsa_perturb(x, first, count, delta=delta, seed=dir_seed, offset=offset, clip=box, out=buf)
            # Flattened image-major, rows 2i and 2i+1 are one ± pair: share_rows=2 gives them one draw.
            share = 2 if common_random_numbers else 1
            with fixed_noise(model, derive_seed(noise, offset, first), share_rows=share):
                logits = model(buf.flatten(0, 1))
            losses = margin_descent(logits.view(batch, 2 * count, -1), labels[:, None], targeted)
            grad += spsa_reduce(
                losses, image_shape, first, delta=delta, seed=dir_seed, offset=offset, total=samples
            )
    return grad


def charged_queries(steps: int, samples: int) -> int:
    """Model evaluations SPSA charges each image: the start, and per step ``samples`` ± pairs
    and the new iterate, ``1 + steps · (2 · samples + 1)`` (the budget a black box beside it
    gets, e.g. Square in the strong preset)."""
    return 1 + steps * (2 * samples + 1)


def spsa(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    steps: int = 5,
    norm: str = "linf",
    lr: float = 0.01,
    delta: float = 0.01,
    samples: int = 128,
    random_init: bool = False,
    clip: Clip | None = (0.0, 1.0),
    label_mode: LabelMode = "true",
    targeted: bool = False,
    early_stop_loss: float | None = None,
    max_batch_bytes: int | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """SPSA with Adam, batched over images, probes chunked to a memory budget.

    Parameters
    ----------
    eps : radius of the ε-ball (the paper: L∞, 0.02 to 1.0).
    steps : Adam iterations (the paper: 5).
    norm : "linf" (the paper) or "l2" (projection onto the L2 ball).
    lr, delta : Adam learning rate and finite-difference step (CleverHans: 0.01, 0.01).
    samples : directions (± pairs) per gradient estimate (CleverHans: 128 → 256 probes).
    random_init : start uniformly in the ε-cube / ball (CleverHans' choice); default: at ``x``
        (Uesato et al., torchattacks).
    early_stop_loss : None (default) runs every step. A number freezes an image once its
        margin loss falls below it (CleverHans stops its one-image loop there; 0 means "as
        soon as misclassified"); frozen images still cost their probes, so the loop stays
        free of host synchronisation.
    max_batch_bytes : probe images per model call, in bytes (activations come on top); None:
        2 MiB on the CPU, 256 MiB on a GPU (``DEFAULT_BATCH_BYTES``).
    seed, generator : the random start, the directions and a stochastic model's draws.

    Returns
    -------
    AttackResult holding each image's lowest-loss iterate (start included), and in ``queries``
    the model evaluations charged to each image (:func:`charged_queries`).

    A stochastic model (the VIB head) evaluates both probes of each ± pair under one model
    draw (common random numbers, ``fixed_noise(..., share_rows=2)``), so the difference
    measures the loss change, not the noise; each chunk and iteration draws afresh.
    """
    steps = check_count("steps", steps)
    if steps >= _MAX_OFFSET:
        raise ValueError(f"steps must be < 2**32, got {steps}")
    lr = check_number("lr", lr, strict=True)
    delta = check_number("delta", delta, strict=True)
    samples = check_count("samples", samples)
    if early_stop_loss is not None and (
        isinstance(early_stop_loss, bool)
        or not isinstance(early_stop_loss, (int, float))
        or math.isnan(early_stop_loss)
    ):
        raise ValueError(f"early_stop_loss must be a number or None, got {early_stop_loss!r}")
    s = begin(SPEC, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed,
              generator=generator, eps=eps, norm=norm)  # fmt: skip
    assert s.eps is not None and s.norm is not None
    x, eps, norm_, box, labels, gen, base = s.x, s.eps, s.norm, s.box, s.labels, s.generator, s.seed
    explicit_budget = max_batch_bytes is not None
    max_batch_bytes = check_count(
        "max_batch_bytes", default_batch_bytes(x.device) if max_batch_bytes is None else max_batch_bytes
    )
    batch = x.shape[0]
    numel = x[0].numel()
    chunk = spsa_chunk(batch, numel, x.element_size(), samples, max_batch_bytes)
    if explicit_budget and 2 * batch * numel * x.element_size() > max_batch_bytes:
        log.warning(
            "spsa: one direction for %d images is %d bytes, over max_batch_bytes=%d; using it anyway",
            batch, 2 * batch * numel * x.element_size(), max_batch_bytes,
        )  # fmt: skip
    storage = x.new_empty(batch * 2 * chunk * numel)  # the model's input buffer, reused

    pert = random_start(x, eps, norm_, gen) if random_init else torch.zeros_like(x)
    pert = clamp_box(x + project(pert, norm_, eps), box) - x
    m1 = torch.zeros_like(x)
    m2 = torch.zeros_like(x)
    bshape = (batch,) + (1,) * (x.dim() - 1)
    beta1, beta2 = _BETAS
    stop = -math.inf if early_stop_loss is None else float(early_stop_loss)

    def loss_at(p: torch.Tensor, step: int) -> torch.Tensor:
        # One forward of the B iterates (1/(2·samples) of an iteration's probes).
        with fixed_noise(model, derive_seed(base, 0xE5, step, 0)):
            return margin_descent(model(x + p), labels, targeted)

    with torch.no_grad():
        best_loss = loss_at(pert, 0)
        best = pert
        for step in range(steps):
            grad = spsa_gradient(
                model, x + pert, labels, delta=delta, samples=samples, seed=base, offset=step,
                targeted=targeted, clip=box, max_batch_bytes=max_batch_bytes, storage=storage,
            )  # fmt: skip
            # Adam on the perturbation, elementwise (per-image state), then back into the ball.
            t = step + 1
            m1.mul_(beta1).add_(grad, alpha=1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (m2 / (1 - beta2**t)).sqrt_().add_(_ADAM_EPS)
            moved = pert - (lr / (1 - beta1**t)) * m1 / denom
            moved = clamp_box(x + project(moved, norm_, eps), box) - x
            # Images whose best loss already passed the early-stop threshold stay put.
            pert = torch.where((best_loss < stop).view(bshape), pert, moved)
            loss = loss_at(pert, step + 1)
            better = loss < best_loss
            best = torch.where(better.view(bshape), pert, best)
            best_loss = torch.where(better, loss, best_loss)

    # Charged per image: the start, then per step 2·samples probes and the iterate (frozen
    # images are still probed). Label resolution and finish's evaluation are not charged.
    charged = torch.full((batch,), charged_queries(steps, samples), dtype=torch.long, device=x.device)
    return finish(model, x, clamp_box(x + best, box), labels, targeted, base, queries=charged)


SPEC = AttackSpec("spsa", spsa, bounded=True, white_box=False, iterative=True)
