"""VIB reparameterised sampling: the typed front of ``medhpc::vib_reparam``.

Registers the op's fake (meta) kernel and its autograd from Python, so ``torch.compile``,
``torch.library.opcheck`` and gradcheck work, and falls back to the pure-PyTorch reference
where no compiled kernel exists for the device.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from medhpc import _ext
from medhpc.ops import reference

KLReduction = Literal["sum", "mean"]
OP = "vib_reparam"


def vib_reparam(
    mu: torch.Tensor,
    a: torch.Tensor,
    samples: int = 1,
    *,
    seed: int,
    offset: int = 0,
    relu: bool = True,
    kl_reduction: KLReduction = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``samples`` latent codes ``z = mu + softplus(r - 5) * eps`` and the KL per example.

    Parameters
    ----------
    mu, a : (B, K) tensors
        Encoder mean and raw sigma pre-activation (same dtype and device).
    samples : int
        S, the number of draws per example (1 in training, e.g. 12 at evaluation).
    seed, offset : int
        Philox stream: the same (seed, offset) gives the same noise on every device, and the
        backward regenerates it instead of storing S*B*K numbers.
    relu : bool
        ``r = relu(a)`` as in Häkkinen & Raj (sigma >= 6.7e-3), or ``r = a`` as in Alemi et al.
    kl_reduction : "sum" or "mean"
        KL summed over the K dimensions (Alemi) or averaged (Häkkinen's scripts: their beta is
        effectively beta / K of Alemi's).

    Returns
    -------
    z : (S, B, K) tensor and kl : (B,) tensor, both differentiable in ``mu`` and ``a``.
    """
    if kl_reduction not in ("sum", "mean"):
        raise ValueError(f"kl_reduction must be 'sum' or 'mean', got {kl_reduction!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    kl_mean = kl_reduction == "mean"
    if _ext.has_kernel(OP, mu.device.type):
        return torch.ops.medhpc.vib_reparam(mu, a, samples, seed, offset, relu, kl_mean)
    _ext.warn_fallback(OP, mu.device.type)
    return reference.vib_reparam(mu, a, samples, seed, offset, relu, kl_mean)


def sample_inputs(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    requires_grad: bool = False,
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Argument sets for ``torch.ops.medhpc.vib_reparam`` covering the op's branches.

    Includes a ReLU-clamped ``a`` with negative entries, an odd latent size (Box-Muller pairs
    straddle rows), a large offset and seed (high Philox words), and a non-contiguous input.
    """

    def make(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        t = torch.randn(*shape, device=device, dtype=dtype) * scale + shift
        return t.requires_grad_(requires_grad)

    def noncontig(rows: int, cols: int) -> torch.Tensor:
        t = torch.randn(cols, rows, device=device, dtype=dtype).t()
        return t.requires_grad_(requires_grad)

    return [
        ((make(4, 8), make(4, 8, scale=3.0), 3, 1234, 0, True, False), {}),
        ((make(3, 7), make(3, 7, scale=2.0, shift=4.0), 2, 7, 5, False, True), {}),
        ((make(2, 16), make(2, 16, scale=3.0, shift=6.0), 1, 2**40 + 3, 2**33 + 1, True, True), {}),
        ((noncontig(5, 6), noncontig(5, 6), 4, 99, 17, True, False), {}),
    ]


if _ext.loaded():

    @torch.library.register_fake("medhpc::vib_reparam")
    def _vib_reparam_fake(
        mu: torch.Tensor,
        a: torch.Tensor,
        samples: int,
        seed: int,
        offset: int,
        relu: bool,
        kl_mean: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        torch._check(mu.dim() == 2, lambda: f"mu must be 2-D, got {mu.dim()}-D")
        torch._check(a.shape == mu.shape, lambda: "a must have mu's shape")
        z = mu.new_empty((samples, mu.shape[0], mu.shape[1]))
        return z, mu.new_empty((mu.shape[0],))

    @torch.library.register_fake("medhpc::_vib_reparam_backward")
    def _vib_reparam_backward_fake(
        grad_z: torch.Tensor,
        grad_kl: torch.Tensor,
        mu: torch.Tensor,
        a: torch.Tensor,
        seed: int,
        offset: int,
        relu: bool,
        kl_mean: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.empty_like(mu), torch.empty_like(a)

    def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        mu, a, samples, seed, offset, relu, kl_mean = inputs
        ctx.save_for_backward(mu, a)
        ctx.samples, ctx.seed, ctx.offset, ctx.relu, ctx.kl_mean = samples, seed, offset, relu, kl_mean

    def _backward(ctx: Any, grad_z: torch.Tensor | None, grad_kl: torch.Tensor | None) -> tuple[Any, ...]:
        mu, a = ctx.saved_tensors
        if grad_z is None:
            grad_z = mu.new_zeros((ctx.samples, mu.shape[0], mu.shape[1]))
        if grad_kl is None:
            grad_kl = mu.new_zeros((mu.shape[0],))
        grad_mu, grad_a = torch.ops.medhpc._vib_reparam_backward(
            grad_z, grad_kl, mu, a, ctx.seed, ctx.offset, ctx.relu, ctx.kl_mean
        )
        return grad_mu, grad_a, None, None, None, None, None

    torch.library.register_autograd("medhpc::vib_reparam", _backward, setup_context=_setup_context)
