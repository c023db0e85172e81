"""Pure-PyTorch references: the executable specification of every compiled kernel.

They draw from the same streams as the kernels (Philox4x32-10 from an explicit ``(seed,
offset)``, csrc/common/philox.h): the Philox words and the SPSA directions are bit-identical on
every device; the VIB normals, ``z`` and KL agree with the kernels within rounding (different
log/sin/cos implementations, FMA contraction and KL summation order), not bit for bit. They are
differentiable by ordinary autograd, which gives the reference gradients, and serve as the
fallback when ``medhpc._C`` is not built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for 32-bit ``b`` held in int64.

    ``b`` is split into 16-bit halves so no intermediate exceeds 2**49: int64 overflow is
    never relied upon.
    """
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    p_lo = a * b_lo  # < 2**48
    p_hi = a * b_hi  # < 2**48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    lo = mid & _MASK32
    hi = (p_hi >> 16) + (mid >> 32)
    return hi & _MASK32, lo


def philox4x32_10(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], key: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 with ten rounds (Random123), on int64 tensors holding 32-bit words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _MASK32
        k1 = (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def _check_seed_offset(seed: int, offset: int) -> None:
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    if not 0 <= offset < 2**63:
        raise ValueError(f"offset must be in [0, 2**63), got {offset}")


def philox_normal(
    shape: tuple[int, ...],
    seed: int,
    offset: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard normal numbers 0 .. numel-1 of the stream ``(seed, offset)``, in ``shape``."""
    numel = 1
    for n in shape:
        numel *= n
    index = torch.arange(numel, dtype=torch.int64, device=device)
    return normal_at(index, seed, offset, dtype).reshape(shape)


def normal_at(index: torch.Tensor, seed: int, offset: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal numbers at the positions ``index`` (int64) of the stream ``(seed, offset)``.

    Number ``i`` is Box-Muller on the first two words of Philox block ``i // 2`` (counter =
    (block lo, block hi, offset lo, offset hi), key = (seed lo, seed hi)): the cosine branch
    for even ``i``, the sine branch for odd ``i``; uniforms are ``(word + 0.5) * 2**-32``.
    Computed in ``dtype`` (float32 or float64), as the kernels do. Taking the positions as a
    tensor (rather than building them inside) keeps the function compilable by
    ``torch.compile``: inductor chokes on ten Philox rounds fed by an in-graph ``arange``.
    """
    _check_seed_offset(seed, offset)
    block = index >> 1
    zeros = torch.zeros_like(block)
    counter = (
        block & _MASK32,
        block >> 32,
        zeros + (offset & _MASK32),
        zeros + (offset >> 32),
    )
    x0, x1, _, _ = philox4x32_10(counter, (seed & _MASK32, seed >> 32))
    scale = 2.0**-32
    u1 = (x0.to(dtype) + 0.5) * scale
    u2 = (x1.to(dtype) + 0.5) * scale
    radius = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * torch.pi) * u2
    return torch.where((index & 1).bool(), radius * torch.sin(theta), radius * torch.cos(theta))


def vib_sigma(a: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """sigma = softplus(r - 5) with r = relu(a) (Häkkinen & Raj) or r = a (Alemi et al.)."""
    r = torch.relu(a) if relu else a
    return F.softplus(r - 5.0)


def vib_noise_index(
    samples: int, batch: int, latent: int, share_rows: int = 1, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Stream positions (S, B, K) of the VIB noise: ``(s * G + b // share_rows) * K + j``.

    Rows ``b`` and ``b'`` get the same noise iff ``b // share_rows == b' // share_rows`` (SPSA's
    common random numbers: both probes of a ± pair under one draw); ``G = ceil(B / share_rows)``
    noise rows per sample, so ``share_rows=1`` is ``arange(S*B*K)``.
    """
    if isinstance(share_rows, bool) or not isinstance(share_rows, int) or share_rows < 1:
        raise ValueError(f"share_rows must be an int >= 1, got {share_rows!r}")
    groups = -(-batch // share_rows)
    s = torch.arange(samples, dtype=torch.int64, device=device).view(samples, 1, 1)
    row = (torch.arange(batch, dtype=torch.int64, device=device) // share_rows).view(1, batch, 1)
    j = torch.arange(latent, dtype=torch.int64, device=device).view(1, 1, latent)
    return (s * groups + row) * latent + j


def vib_reparam(
    mu: torch.Tensor,
    a: torch.Tensor,
    samples: int,
    seed: int,
    offset: int = 0,
    relu: bool = True,
    kl_mean: bool = False,
    share_rows: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VIB reparameterised sampling and KL, the specification of ``medhpc::vib_reparam``.

    Returns ``z`` of shape (samples, B, K) with ``z[s] = mu + sigma * eps[s]`` and the
    per-example ``KL(N(mu, sigma^2) || N(0, I))`` of shape (B,), summed over the K latent
    dimensions (Alemi et al.) or averaged (``kl_mean``, Häkkinen & Raj's scripts), computed in
    float32 (float64 for float64) and returned in the input dtype. ``eps[s, b, j]`` is number
    ``(s * G + b // share_rows) * K + j`` of the Philox stream ``(seed, offset)``
    (:func:`vib_noise_index`).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if mu.dim() != 2:
        raise ValueError(f"mu must be 2-D (batch, latent), got shape {tuple(mu.shape)}")
    index = vib_noise_index(samples, mu.shape[0], mu.shape[1], share_rows, mu.device)
    return vib_reparam_at(mu, a, index, seed, offset, relu, kl_mean)


def vib_reparam_at(
    mu: torch.Tensor,
    a: torch.Tensor,
    index: torch.Tensor,
    seed: int,
    offset: int = 0,
    relu: bool = True,
    kl_mean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`vib_reparam` with the noise positions given: ``index`` (S, B, K) int64, normally
    :func:`vib_noise_index`. The form to hand to ``torch.compile`` (see :func:`normal_at`)."""
    if mu.dim() != 2 or a.shape != mu.shape:
        raise ValueError(f"mu and a must be 2-D of one shape, got {tuple(mu.shape)}, {tuple(a.shape)}")
    if index.dim() != 3 or index.shape[1:] != mu.shape:
        raise ValueError(f"index must be (S, {mu.shape[0]}, {mu.shape[1]}), got {tuple(index.shape)}")
    acc = torch.float64 if mu.dtype == torch.float64 else torch.float32
    mu_acc, a_acc = mu.to(acc), a.to(acc)
    sigma = vib_sigma(a_acc, relu)
    z = mu_acc + sigma * normal_at(index, seed, offset, acc)
    kl = (0.5 * (mu_acc.square() + sigma.square() - 1.0) - torch.log(sigma)).sum(dim=-1)
    if kl_mean:
        kl = kl / mu.shape[1]
    return z.to(mu.dtype), kl.to(mu.dtype)


_SPSA_TILE, _SPSA_LANES = 4096, 32


def rademacher(
    batch: int,
    numel: int,
    first: int,
    count: int,
    seed: int,
    offset: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """SPSA directions ``v[b, i]`` (k = first + i) of shape (batch, count, numel), entries +-1.

    Element ``e`` of direction ``k`` for image ``b`` is bit ``(e % 4096) // 32`` of the Philox
    block with counter (32 * (e // 4096) + e % 32, k, b, offset) and key (seed lo, seed hi):
    a set bit is +1. The layout lets one CUDA warp draw one block per lane (csrc/common/rademacher.h).
    """
    _check_seed_offset(seed, offset)
    if offset >= 2**32:
        raise ValueError(f"offset must be in [0, 2**32) for SPSA, got {offset}")
    e = torch.arange(numel, dtype=torch.int64, device=device)
    local = e % _SPSA_TILE
    c0 = (e // _SPSA_TILE) * _SPSA_LANES + e % _SPSA_LANES
    bit = local // _SPSA_LANES
    k = torch.arange(first, first + count, dtype=torch.int64, device=device)
    b = torch.arange(batch, dtype=torch.int64, device=device)
    shape = (batch, count, numel)
    words = philox4x32_10(
        (
            c0.expand(shape),
            k[None, :, None].expand(shape),
            b[:, None, None].expand(shape),
            torch.full(shape, offset, dtype=torch.int64, device=device),
        ),
        (seed & _MASK32, seed >> 32),
    )
    stacked = torch.stack(words, dim=-1)  # (batch, count, numel, 4)
    word = torch.gather(stacked, -1, (bit // 32).expand(shape).unsqueeze(-1)).squeeze(-1)
    set_bit = (word >> (bit % 32)) & 1
    return (set_bit * 2 - 1).to(dtype)


def spsa_perturb(
    x: torch.Tensor,
    first: int,
    count: int,
    delta: float,
    seed: int,
    offset: int,
    clip_min: float,
    clip_max: float,
) -> torch.Tensor:
    """Antithetic SPSA probes, the specification of ``medhpc::spsa_perturb``.

    Returns (B, 2*count, *x.shape[1:]) with ``out[b, 2i] = clip(x[b] + delta v[b, i])`` and
    ``out[b, 2i+1] = clip(x[b] - delta v[b, i])``, computed in float32 (float64 for float64).
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, numel = x.shape[0], x.shape[1:].numel()
    flat = x.reshape(batch, 1, numel).to(acc)  # numel spelt out: -1 is ambiguous for an empty batch
    v = rademacher(batch, numel, first, count, seed, offset, acc, x.device)
    plus = torch.clamp(flat + delta * v, clip_min, clip_max)
    minus = torch.clamp(flat - delta * v, clip_min, clip_max)
    out = torch.stack([plus, minus], dim=2).reshape(batch, 2 * count, *x.shape[1:])
    return out.to(x.dtype)


def spsa_reduce(
    losses: torch.Tensor,
    image_shape: list[int] | tuple[int, ...],
    first: int,
    delta: float,
    seed: int,
    offset: int,
    total: int,
) -> torch.Tensor:
    """SPSA gradient estimate, the specification of ``medhpc::spsa_reduce``.

    ``sum_i (L[b, 2i] - L[b, 2i+1]) / (2 delta total) * v[b, first+i]`` for the losses of
    ``spsa_perturb``'s output; summing the results of chunks that cover directions
    0 .. total-1 gives the mean over all ``total`` directions (Uesato et al. 2018).
    """
    acc = torch.float64 if losses.dtype == torch.float64 else torch.float32
    batch, pairs = losses.shape[0], losses.shape[1] // 2
    numel = 1
    for d in image_shape:
        numel *= d
    diff = (losses[:, 0::2].to(acc) - losses[:, 1::2].to(acc)) / (2.0 * delta * total)
    v = rademacher(batch, numel, first, pairs, seed, offset, acc, losses.device)
    grad = torch.einsum("bk,bkd->bd", diff, v)
    return grad.reshape(batch, *image_shape).to(losses.dtype)
