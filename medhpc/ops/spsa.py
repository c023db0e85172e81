"""SPSA finite differences: typed fronts of ``medhpc::spsa_perturb`` and ``medhpc::spsa_reduce``.

The attack (Uesato et al. 2018) estimates each image's gradient from antithetic probes
``x +- delta v`` with Rademacher ``v``. ``spsa_perturb`` writes the probes for a chunk of
directions straight into the model's input buffer, ``spsa_reduce`` turns the chunk's losses
back into its share of the estimate; both regenerate ``v`` from Philox (seed, offset) instead
of storing it, so a chunk of any size costs only its probes' memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from medhpc import _ext
from medhpc.ops import reference


def spsa_perturb(
    x: torch.Tensor,
    first: int,
    count: int,
    *,
    delta: float,
    seed: int,
    offset: int = 0,
    clip: tuple[float, float] = (0.0, 1.0),
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probes ``clip(x +- delta v)`` for directions ``first .. first+count-1`` of every image.

    Parameters
    ----------
    x : (B, ...) tensor
        The current iterates, one per image.
    first, count : int
        The chunk of directions to draw (global indices, so chunks compose).
    delta : float
        Finite-difference step (CleverHans default 0.01).
    seed, offset : int
        Philox stream; use a fresh offset (e.g. the iteration) for fresh directions.
    clip : (min, max)
        Valid pixel range the probes are clipped to.
    out : tensor, optional
        A contiguous (B, 2*count, ...) buffer of x's dtype to write into, e.g. the model's
        input buffer reused across iterations: a fresh probe batch of hundreds of MB costs
        more in page faults on the CPU than writing the probes does.

    Returns
    -------
    (B, 2*count, ...) tensor: ``[:, 2i]`` is ``x + delta v_i``, ``[:, 2i+1]`` is ``x - delta v_i``;
    ``.flatten(0, 1)`` is a free view that feeds the model.
    """
    lo, hi = float(clip[0]), float(clip[1])
    if _ext.has_kernel("spsa_perturb", x.device.type):
        if out is None:
            return torch.ops.medhpc.spsa_perturb(x, first, count, float(delta), seed, offset, lo, hi)
        torch.ops.medhpc.spsa_perturb_out(x, first, count, float(delta), seed, offset, lo, hi, out)
        return out
    _ext.warn_fallback("spsa_perturb", x.device.type)
    _check_perturb(x, first, count, delta, lo, hi)
    probes = reference.spsa_perturb(x, first, count, float(delta), seed, offset, lo, hi)
    if out is None:
        return probes
    if out.shape != probes.shape or out.dtype != probes.dtype:
        raise ValueError(f"out must be {tuple(probes.shape)} {probes.dtype}, got {tuple(out.shape)} {out.dtype}")
    return out.copy_(probes)


def spsa_reduce(
    losses: torch.Tensor,
    image_shape: Sequence[int],
    first: int,
    *,
    delta: float,
    seed: int,
    offset: int = 0,
    total: int,
) -> torch.Tensor:
    """This chunk's share of the SPSA gradient estimate, shaped (B, *image_shape).

    ``losses`` is (B, 2*count), the model's loss on each probe of ``spsa_perturb`` (same
    ``first``, ``delta``, ``seed``, ``offset``); summing over chunks that cover directions
    ``0 .. total-1`` gives the mean estimate over ``total`` directions.
    """
    shape = [int(d) for d in image_shape]
    if _ext.has_kernel("spsa_reduce", losses.device.type):
        return torch.ops.medhpc.spsa_reduce(losses, shape, first, float(delta), seed, offset, total)
    _ext.warn_fallback("spsa_reduce", losses.device.type)
    if losses.dim() != 2 or losses.shape[1] % 2 or losses.shape[1] == 0:
        raise ValueError(f"losses must be (B, 2*count), got {tuple(losses.shape)}")
    if delta <= 0 or total < 1:
        raise ValueError(f"delta must be > 0 and total >= 1, got {delta}, {total}")
    return reference.spsa_reduce(losses, shape, first, float(delta), seed, offset, total)


def _check_perturb(x: torch.Tensor, first: int, count: int, delta: float, lo: float, hi: float) -> None:
    """The kernels' argument checks, for the reference fallback."""
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (B, ...), got shape {tuple(x.shape)}")
    if first < 0 or count < 1:
        raise ValueError(f"need first >= 0 and count >= 1, got {first}, {count}")
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if lo > hi:
        raise ValueError(f"clip range ({lo}, {hi}) is empty")


def sample_inputs(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, list[tuple[Any, ...]]]:
    """Argument sets for ``spsa_perturb`` and ``spsa_reduce``: several tiles with a ragged last
    one, a single image, a chunk starting past 0, high seed words, a non-contiguous batch."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=dtype).to(device)

    noncontig = rand(3, 20, 20, 2).permute(0, 3, 1, 2)  # (3, 2, 20, 20), not contiguous
    perturb = [
        (rand(2, 3, 40, 40), 0, 5, 0.01, 1234, 0, 0.0, 1.0),  # 4800 elements: 2 tiles
        (rand(1, 1, 7, 9), 3, 4, 0.5, 2**40 + 7, 9, 0.0, 1.0),
        (rand(4, 10), 0, 1, 0.2, 5, 2**31, -float("inf"), float("inf")),
        (noncontig, 2, 3, 0.05, 77, 3, 0.1, 0.9),
    ]
    reduce = [
        (rand(2, 10), [3, 40, 40], 0, 0.01, 1234, 0, 5),
        (rand(1, 8), [1, 7, 9], 3, 0.5, 2**40 + 7, 9, 12),
        (rand(4, 2), [10], 0, 0.2, 5, 2**31, 1),
        (rand(6, 3).t(), [2, 20, 20], 2, 0.05, 77, 3, 3),  # (3, 6), not contiguous
    ]
    return {"spsa_perturb": perturb, "spsa_reduce": reduce}


if _ext.loaded():

    @torch.library.register_fake("medhpc::spsa_perturb")
    def _spsa_perturb_fake(
        x: torch.Tensor,
        first: int,
        count: int,
        delta: float,
        seed: int,
        offset: int,
        clip_min: float,
        clip_max: float,
    ) -> torch.Tensor:
        torch._check(x.dim() >= 2, lambda: "x must be a batch (B, ...)")
        return x.new_empty((x.shape[0], 2 * count, *x.shape[1:]))

    @torch.library.register_fake("medhpc::spsa_perturb_out")
    def _spsa_perturb_out_fake(
        x: torch.Tensor,
        first: int,
        count: int,
        delta: float,
        seed: int,
        offset: int,
        clip_min: float,
        clip_max: float,
        out: torch.Tensor,
    ) -> None:
        return None

    @torch.library.register_fake("medhpc::spsa_reduce")
    def _spsa_reduce_fake(
        losses: torch.Tensor,
        image_shape: list[int],
        first: int,
        delta: float,
        seed: int,
        offset: int,
        total: int,
    ) -> torch.Tensor:
        torch._check(losses.dim() == 2, lambda: "losses must be (B, 2*count)")
        return losses.new_empty((losses.shape[0], *image_shape))
