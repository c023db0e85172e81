"""VIB reparameterised sampling: the typed front of ``medhpc::vib_reparam``.

Registers the op's fake (meta) kernel and its autograd from Python, so ``torch.compile``,
``torch.library.opcheck`` and gradcheck work, and falls back to the pure-PyTorch reference
where no compiled kernel exists for the device.

Dtype contract (the same on every device, under autocast or not): sampling and KL are computed
in float32 (float64 for float64 inputs) and returned in the inputs' dtype, so a bfloat16 model
gets bfloat16 ``z`` and KL rounded once from the float32 result, and gradients flow back in the
inputs' dtype. The front enforces it (the CPU kernel takes float32/float64 only; the CUDA kernel
computes half and bfloat16 in float itself), so callers such as the VIB head need not cast.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from medhpc import _ext
from medhpc.ops import reference

KLReduction = Literal["sum", "mean"]
OP = "vib_reparam"
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def vib_reparam(
    mu: torch.Tensor,
    a: torch.Tensor,
    samples: int = 1,
    *,
    seed: int,
    offset: int = 0,
    relu: bool = True,
    kl_reduction: KLReduction = "sum",
    share_rows: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``samples`` latent codes ``z = mu + softplus(r - 5) * eps`` and the KL per example.

    Parameters
    ----------
    mu, a : (B, K) tensors
        Encoder mean and raw sigma pre-activation (same dtype and device).
    samples : int
        S, the number of draws per example (1 in training, e.g. 12 at evaluation).
    seed, offset : int
        Philox stream: the same (seed, offset) names the same noise on every device (equal
        within rounding across devices, bit-identical run to run on one), and the backward
        regenerates it instead of storing S*B*K numbers.
    relu : bool
        ``r = relu(a)`` as in Häkkinen & Raj (sigma >= 6.7e-3), or ``r = a`` as in Alemi et al.
    kl_reduction : "sum" or "mean"
        KL summed over the K dimensions (Alemi) or averaged (Häkkinen's scripts: their beta is
        effectively beta / K of Alemi's).
    share_rows : int
        Rows ``b`` and ``b'`` draw the same noise iff ``b // share_rows == b' // share_rows``
        (SPSA's common random numbers use 2: both probes of a ± pair under one draw); 1 gives
        every row its own.

    Returns
    -------
    z : (S, B, K) tensor and kl : (B,) tensor in the inputs' dtype, both differentiable in
    ``mu`` and ``a`` (see the module docstring for the dtype contract).
    """
    if kl_reduction not in ("sum", "mean"):
        raise ValueError(f"kl_reduction must be 'sum' or 'mean', got {kl_reduction!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if isinstance(share_rows, bool) or not isinstance(share_rows, int) or share_rows < 1:
        raise ValueError(f"share_rows must be an int >= 1, got {share_rows!r}")
    if not (mu.is_floating_point() and a.is_floating_point()):
        raise TypeError(f"vib_reparam takes floating-point mu and a, got {mu.dtype} and {a.dtype}")
    kl_mean = kl_reduction == "mean"
    out_dtype = torch.promote_types(mu.dtype, a.dtype)
    device = mu.device.type
    if device == "cuda" and out_dtype in _LOW_PRECISION and _ext.has_kernel(OP, device):
        # The CUDA kernel computes half/bfloat16 in float and rounds once at the store: the
        # contract's numbers without a float32 copy of z.
        return torch.ops.medhpc.vib_reparam(
            mu.to(out_dtype), a.to(out_dtype), samples, seed, offset, relu, kl_mean, share_rows
        )
    compute = torch.float64 if out_dtype == torch.float64 else torch.float32
    mu_c, a_c = mu.to(compute), a.to(compute)
    if _ext.has_kernel(OP, device):
        z, kl = torch.ops.medhpc.vib_reparam(mu_c, a_c, samples, seed, offset, relu, kl_mean, share_rows)
    else:
        _ext.warn_fallback(OP, device)
        z, kl = reference.vib_reparam(mu_c, a_c, samples, seed, offset, relu, kl_mean, share_rows)
    return z.to(out_dtype), kl.to(out_dtype)


def sample_inputs(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    requires_grad: bool = False,
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Argument sets for ``torch.ops.medhpc.vib_reparam`` covering the op's branches.

    Includes a ReLU-clamped ``a`` with negative entries, an odd latent size (Box-Muller pairs
    straddle rows), a large offset and seed (high Philox words), a non-contiguous input, and
    ``share_rows`` of 2 and 3 (with a batch they do not divide, an odd K, and more than B).
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
        ((make(5, 7), make(5, 7, scale=3.0, shift=1.0), 3, 42, 9, True, False, 2), {}),
        ((make(7, 4), make(7, 4, scale=2.0, shift=3.0), 2, 2**35 + 1, 4, False, True, 3), {}),
        ((make(3, 5), make(3, 5, scale=3.0), 2, 5, 0, True, False, 4), {}),
        ((make(4, 6), make(4, 6, scale=3.0), 1, 8, 1, True, True, 1), {}),
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
        share_rows: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        torch._check(mu.dim() == 2, lambda: f"mu must be 2-D, got {mu.dim()}-D")
        torch._check(a.shape == mu.shape, lambda: "a must have mu's shape")
        torch._check(share_rows >= 1, lambda: f"share_rows must be >= 1, got {share_rows}")
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
        share_rows: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.empty_like(mu), torch.empty_like(a)

    def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        mu, a, samples, seed, offset, relu, kl_mean, *rest = inputs
        ctx.save_for_backward(mu, a)
        ctx.samples, ctx.seed, ctx.offset, ctx.relu, ctx.kl_mean = samples, seed, offset, relu, kl_mean
        ctx.share_rows = rest[0] if rest else 1
        ctx.n_inputs = len(inputs)

    def _backward(ctx: Any, grad_z: torch.Tensor | None, grad_kl: torch.Tensor | None) -> tuple[Any, ...]:
        mu, a = ctx.saved_tensors
        if grad_z is None:
            grad_z = mu.new_zeros((ctx.samples, mu.shape[0], mu.shape[1]))
        if grad_kl is None:
            grad_kl = mu.new_zeros((mu.shape[0],))
        grad_mu, grad_a = torch.ops.medhpc._vib_reparam_backward(
            grad_z, grad_kl, mu, a, ctx.seed, ctx.offset, ctx.relu, ctx.kl_mean, ctx.share_rows
        )
        return (grad_mu, grad_a) + (None,) * (ctx.n_inputs - 2)

    torch.library.register_autograd("medhpc::vib_reparam", _backward, setup_context=_setup_context)
