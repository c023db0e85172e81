"""medhpc::vib_reparam: compiled kernels held to the pure-PyTorch reference.

Values, gradients (float64 gradcheck and reference autograd), opcheck, noise statistics,
determinism, non-contiguous inputs and error messages, on CPU and (marked gpu) on CUDA.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medhpc import _ext
from medhpc.ops import reference, vib_reparam
from medhpc.ops.vib import sample_inputs

needs_ext = pytest.mark.skipif(not _ext.loaded(), reason=f"medhpc._C not loaded: {_ext.LOAD_ERROR}")

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]
TOL = {torch.float64: {"rtol": 1e-12, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


def test_philox_matches_random123_known_answers() -> None:
    zero = torch.zeros(1, dtype=torch.int64)
    ones = torch.full((1,), 0xFFFFFFFF, dtype=torch.int64)
    out = reference.philox4x32_10((zero, zero, zero, zero), (0, 0))
    assert [int(w) for w in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    out = reference.philox4x32_10((ones, ones, ones, ones), (0xFFFFFFFF, 0xFFFFFFFF))
    assert [int(w) for w in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_values_match_reference(device: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    for args, _ in sample_inputs(device, dtype):
        z, kl = torch.ops.medhpc.vib_reparam(*args)
        z_ref, kl_ref = reference.vib_reparam(*args)
        assert z.shape == z_ref.shape and kl.shape == kl_ref.shape
        torch.testing.assert_close(z, z_ref, **TOL[dtype])
        torch.testing.assert_close(kl, kl_ref, **TOL[dtype])


@needs_ext
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_inputs_accumulate_in_float(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    for args, _ in sample_inputs("cuda", dtype):
        z, kl = torch.ops.medhpc.vib_reparam(*args)
        z_ref, kl_ref = reference.vib_reparam(*args)
        assert z.dtype == dtype and kl.dtype == dtype
        torch.testing.assert_close(z, z_ref, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(kl, kl_ref, rtol=1e-2, atol=1e-1)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_backward_matches_reference_autograd(device: str) -> None:
    torch.manual_seed(1)
    for args, _ in sample_inputs(device, torch.float64, requires_grad=True):
        mu, a, *rest = args
        z, kl = torch.ops.medhpc.vib_reparam(mu, a, *rest)
        gz, gkl = torch.randn_like(z), torch.randn_like(kl)
        got = torch.autograd.grad((z, kl), (mu, a), (gz, gkl))
        z_ref, kl_ref = reference.vib_reparam(mu, a, *rest)
        want = torch.autograd.grad((z_ref, kl_ref), (mu, a), (gz, gkl))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kl_reduction", ["sum", "mean"])
@pytest.mark.parametrize("relu", [True, False])
def test_gradcheck_float64(device: str, kl_reduction: str, relu: bool) -> None:
    torch.manual_seed(2)
    mu = torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    # keep a away from 0 where relu has its kink, so finite differences are valid
    a = (torch.rand(3, 5, dtype=torch.float64, device=device) * 6 + 0.5) * torch.sign(
        torch.randn(3, 5, dtype=torch.float64, device=device)
    )
    a.requires_grad_(True)

    def fn(m: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return vib_reparam(m, x, 4, seed=11, offset=3, relu=relu, kl_reduction=kl_reduction)

    assert torch.autograd.gradcheck(fn, (mu, a))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device: str) -> None:
    torch.manual_seed(3)
    for args, kwargs in sample_inputs(device, torch.float32, requires_grad=True):
        torch.library.opcheck(torch.ops.medhpc.vib_reparam.default, args, kwargs)
    for args, kwargs in sample_inputs(device, torch.float64, requires_grad=False):
        torch.library.opcheck(torch.ops.medhpc.vib_reparam.default, args, kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_same_stream_is_bit_identical_and_streams_differ(device: str) -> None:
    mu = torch.zeros(8, 64, device=device)
    a = torch.full((8, 64), 5.0, device=device)  # sigma = softplus(0) = log 2
    z1, _ = vib_reparam(mu, a, 3, seed=5, offset=0)
    z2, _ = vib_reparam(mu, a, 3, seed=5, offset=0)
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, vib_reparam(mu, a, 3, seed=6, offset=0)[0])
    assert not torch.equal(z1, vib_reparam(mu, a, 3, seed=5, offset=1)[0])
    # sample s does not depend on how many samples were drawn
    assert torch.equal(vib_reparam(mu, a, 5, seed=5, offset=0)[0][:3], z1)


@pytest.mark.parametrize("device", DEVICES)
def test_noise_is_standard_normal_and_uncorrelated(device: str) -> None:
    mu = torch.zeros(64, 256, device=device, dtype=torch.float64)
    a = torch.full_like(mu, 5.0)
    sigma = torch.log(torch.tensor(2.0, dtype=torch.float64))
    z, _ = vib_reparam(mu, a, 16, seed=123, offset=0)
    eps = (z / sigma).cpu()
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / n**0.5
    assert abs(eps.var().item() - 1.0) < 5 * (2 / n) ** 0.5
    # fourth moment of a normal is 3: catches a uniform or truncated generator
    assert abs(eps.pow(4).mean().item() - 3.0) < 0.05

    def corr(x: torch.Tensor, y: torch.Tensor) -> float:
        return torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1].item()

    bound = 5 / (eps[0].numel()) ** 0.5
    assert abs(corr(eps[0], eps[1])) < bound  # across samples
    assert abs(corr(eps[:, 0], eps[:, 1])) < 5 / (eps[:, 0].numel()) ** 0.5  # across examples
    assert abs(corr(eps[..., 0::2], eps[..., 1::2])) < 5 / (eps[..., 0::2].numel()) ** 0.5  # Box-Muller pairs
    other, _ = vib_reparam(mu, a, 16, seed=124, offset=0)
    assert abs(corr(eps, (other / sigma).cpu())) < 5 / n**0.5  # across seeds


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments_name_themselves(device: str) -> None:
    mu = torch.randn(2, 4, device=device)
    op = torch.ops.medhpc.vib_reparam
    with pytest.raises(RuntimeError, match="mu must be 2-D"):
        op(torch.randn(2, 4, 1, device=device), torch.randn(2, 4, 1, device=device), 1, 0, 0, True, False)
    with pytest.raises(RuntimeError, match="a must have mu's shape"):
        op(mu, torch.randn(2, 5, device=device), 1, 0, 0, True, False)
    with pytest.raises(RuntimeError, match="a has dtype"):
        op(mu, torch.randn(2, 4, device=device, dtype=torch.float64), 1, 0, 0, True, False)
    with pytest.raises(RuntimeError, match="samples must be >= 1"):
        op(mu, mu, 0, 0, 0, True, False)
    with pytest.raises(RuntimeError, match="seed must be >= 0"):
        op(mu, mu, 1, -1, 0, True, False)
    with pytest.raises(RuntimeError, match="offset must be >= 0"):
        op(mu, mu, 1, 0, -3, True, False)
    with pytest.raises(RuntimeError, match="vib_reparam"):
        op(mu.long(), mu.long(), 1, 0, 0, True, False)
    with pytest.raises(ValueError, match="kl_reduction"):
        vib_reparam(mu, mu, seed=0, kl_reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="samples"):
        vib_reparam(mu, mu, 0, seed=0)


def test_relu_floor_and_kl_of_prior_match_closed_forms() -> None:
    # With the ReLU, sigma >= softplus(-5) = 6.7e-3; with mu = 0 and sigma = 1 the KL is 0.
    mu = torch.zeros(2, 3, dtype=torch.float64)
    a = torch.full_like(mu, -10.0)
    z, kl = vib_reparam(mu, a, 1, seed=0, relu=True)
    sigma = reference.vib_sigma(a, relu=True)
    torch.testing.assert_close(sigma, torch.full_like(a, 0.006715348489117967))
    a_unit = torch.full_like(mu, 5.0 + torch.log(torch.expm1(torch.tensor(1.0, dtype=torch.float64))).item())
    _, kl_unit = vib_reparam(mu, a_unit, 1, seed=0, relu=True)
    torch.testing.assert_close(kl_unit, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    _, kl_sum = vib_reparam(torch.ones(2, 3, dtype=torch.float64), a_unit, 1, seed=0)
    _, kl_mean = vib_reparam(torch.ones(2, 3, dtype=torch.float64), a_unit, 1, seed=0, kl_reduction="mean")
    torch.testing.assert_close(kl_sum, torch.full((2,), 1.5, dtype=torch.float64))
    torch.testing.assert_close(kl_mean, torch.full((2,), 0.5, dtype=torch.float64))


# --- share_rows: one draw per group of rows (SPSA's common random numbers) ---------------------


def old_head_index(samples: int, batch: int, latent: int, share: int) -> torch.Tensor:
    """The noise positions VIBHead.sample built by hand before the op took share_rows."""
    groups = -(-batch // share)
    row = torch.arange(batch) // share
    return (torch.arange(samples).view(samples, 1, 1) * groups + row.view(1, batch, 1)) * latent + torch.arange(
        latent
    ).view(1, 1, latent)


@pytest.mark.parametrize("shape", [(5, 7, 2), (7, 4, 3), (3, 5, 4), (6, 8, 2), (4, 6, 1)])
def test_reference_share_rows_is_the_old_index_formula(shape: tuple[int, int, int]) -> None:
    batch, latent, share = shape
    index = reference.vib_noise_index(3, batch, latent, share)
    assert torch.equal(index, old_head_index(3, batch, latent, share))
    if share == 1:
        assert torch.equal(index.flatten(), torch.arange(3 * batch * latent))
    mu, a = torch.randn(batch, latent), torch.randn(batch, latent) * 3
    z, kl = reference.vib_reparam(mu, a, 3, 9, 2, True, False, share)
    z_at, kl_at = reference.vib_reparam_at(mu, a, old_head_index(3, batch, latent, share), 9, 2, True, False)
    assert torch.equal(z, z_at) and torch.equal(kl, kl_at)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("share", [1, 2, 3, 8])
def test_share_rows_groups_share_noise_and_match_reference(device: str, share: int) -> None:
    torch.manual_seed(4)
    batch, latent = 7, 5  # 7 rows: the last group is short for share 2, 3 and 8
    mu = torch.randn(1, latent, device=device, dtype=torch.float64).expand(batch, -1)
    a = torch.randn(1, latent, device=device, dtype=torch.float64).mul(3).expand(batch, -1)
    z, kl = torch.ops.medhpc.vib_reparam(mu, a, 3, 21, 4, True, False, share)
    z_ref, kl_ref = reference.vib_reparam(mu, a, 3, 21, 4, True, False, share)
    torch.testing.assert_close(z, z_ref, **TOL[torch.float64])
    torch.testing.assert_close(kl, kl_ref, **TOL[torch.float64])
    group = torch.arange(batch, device=device) // share
    same = group[:, None] == group[None, :]
    equal = (z[:, :, None, :] == z[:, None, :, :]).all(-1).all(0)
    assert torch.equal(equal, same)  # identical within a group, different across groups


@needs_ext
def test_share_rows_one_is_the_default_bit_for_bit() -> None:
    for args, _ in sample_inputs("cpu", torch.float32):
        base = args[:7]
        z1, kl1 = torch.ops.medhpc.vib_reparam(*base)
        z2, kl2 = torch.ops.medhpc.vib_reparam(*base, 1)
        assert torch.equal(z1, z2) and torch.equal(kl1, kl2)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("share", [2, 3])
def test_gradcheck_float64_share_rows(device: str, share: int) -> None:
    torch.manual_seed(5)
    mu = torch.randn(5, 3, dtype=torch.float64, device=device, requires_grad=True)
    a = (torch.rand(5, 3, dtype=torch.float64, device=device) * 6 + 0.5).requires_grad_(True)

    def fn(m: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return vib_reparam(m, x, 3, seed=2, offset=1, share_rows=share)

    assert torch.autograd.gradcheck(fn, (mu, a))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_share_rows_must_be_positive(device: str) -> None:
    mu = torch.randn(2, 4, device=device)
    with pytest.raises(RuntimeError, match="share_rows must be >= 1, got 0"):
        torch.ops.medhpc.vib_reparam(mu, mu, 1, 0, 0, True, False, 0)
    with pytest.raises(RuntimeError, match="share_rows must be >= 1, got -2"):
        torch.ops.medhpc._vib_reparam_backward(
            torch.zeros(1, 2, 4, device=device), torch.zeros(2, device=device), mu, mu, 0, 0, True, False, -2
        )
    with pytest.raises(ValueError, match="share_rows"):
        vib_reparam(mu, mu, seed=0, share_rows=0)
    with pytest.raises(ValueError, match="share_rows"):
        reference.vib_noise_index(1, 2, 4, 0)


# --- NaN in, NaN out ---------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("relu", [True, False])
def test_nan_inputs_give_nan_outputs_as_the_reference(device: str, relu: bool) -> None:
    nan = float("nan")
    mu = torch.randn(3, 5, dtype=torch.float64, device=device)
    a = torch.randn(3, 5, dtype=torch.float64, device=device) * 3
    a[0, 1] = nan
    mu[1, 3] = nan
    mu.requires_grad_(True)
    a.requires_grad_(True)
    z, kl = vib_reparam(mu, a, 2, seed=3, relu=relu)
    z_ref, kl_ref = reference.vib_reparam(mu, a, 2, 3, 0, relu, False)
    assert torch.isnan(z[:, 0, 1]).all() and torch.isnan(z[:, 1, 3]).all()
    assert torch.isnan(kl[:2]).all() and not torch.isnan(kl[2])
    assert torch.isnan(z).sum() == 4  # nothing else is touched
    torch.testing.assert_close(z, z_ref, equal_nan=True, **TOL[torch.float64])
    torch.testing.assert_close(kl, kl_ref, equal_nan=True, **TOL[torch.float64])
    gz, gkl = torch.randn_like(z), torch.randn_like(kl)
    got = torch.autograd.grad((z, kl), (mu, a), (gz, gkl))
    want = torch.autograd.grad((z_ref, kl_ref), (mu, a), (gz, gkl))
    assert torch.isnan(got[1][0, 1]) and torch.isnan(got[0][1, 3])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, equal_nan=True, rtol=1e-10, atol=1e-10)


# --- the CUDA schedule, run on the CPU ---------------------------------------------------------


@needs_ext
@pytest.mark.parametrize(
    "shape",
    [(3, 4, 8, 1), (2, 3, 7, 1), (3, 5, 7, 2), (2, 7, 4, 3), (3, 3, 5, 4), (1, 1, 1, 1), (4, 5, 3, 5)],
    ids=lambda s: "S{}-B{}-K{}-share{}".format(*s),
)
def test_cuda_schedule_draws_every_position_once_per_pair_as_the_reference(
    shape: tuple[int, int, int, int],
) -> None:
    """The CUDA kernels' per-thread bodies (common/vib_schedule.h), run serially on the CPU:
    each z and grad_z element is tied to exactly the reference's stream position (odd K and
    odd G*K make pairs straddle rows and samples), and values and gradients match."""
    samples, batch, latent, share = shape
    torch.manual_seed(6)
    mu = torch.randn(batch, latent, dtype=torch.float64, requires_grad=True)
    a = (torch.randn(batch, latent, dtype=torch.float64) * 3 + 1).requires_grad_(True)
    gz = torch.randn(samples, batch, latent, dtype=torch.float64)
    gkl = torch.randn(batch, dtype=torch.float64)
    for relu, kl_mean in [(True, False), (False, True)]:
        z, gmu, ga, pos_fwd, pos_bwd = torch.ops.medhpc._vib_reparam_cuda_schedule(
            mu.detach(), a.detach(), gz, gkl, 2**33 + 7, 3, relu, kl_mean, share
        )
        want_pos = reference.vib_noise_index(samples, batch, latent, share)
        assert torch.equal(pos_fwd, want_pos) and torch.equal(pos_bwd, want_pos)
        z_ref, kl_ref = reference.vib_reparam(mu, a, samples, 2**33 + 7, 3, relu, kl_mean, share)
        torch.testing.assert_close(z, z_ref.detach(), **TOL[torch.float64])
        want = torch.autograd.grad((z_ref, kl_ref), (mu, a), (gz, gkl))
        torch.testing.assert_close(gmu, want[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ga, want[1], rtol=1e-10, atol=1e-10)
        # ... and agree with the CPU kernel
        z_cpu, _ = torch.ops.medhpc.vib_reparam(mu.detach(), a.detach(), samples, 2**33 + 7, 3, relu, kl_mean, share)
        torch.testing.assert_close(z, z_cpu, **TOL[torch.float64])


# --- what is bit-identical, and where -----------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("first", [0, 5, 2**32 - 9, 2**40 + 3])
def test_kernel_philox_words_are_the_reference_bit_for_bit(first: int) -> None:
    """Philox words are bit-identical in the vectorised CPU kernels, common/philox.h (the CUDA
    kernels' code) and the reference, across the 2^32 carry into the counter's high word."""
    seed, offset = 2**45 + 11, 2**35 + 2
    words = torch.ops.medhpc._vib_philox_words(first, 70, seed, offset)
    block = torch.arange(first, first + 70, dtype=torch.int64)
    zeros = torch.zeros_like(block)
    x0, x1, _, _ = reference.philox4x32_10(
        (block & 0xFFFFFFFF, block >> 32, zeros + (offset & 0xFFFFFFFF), zeros + (offset >> 32)),
        (seed & 0xFFFFFFFF, seed >> 32),
    )
    for col, want in [(0, x0), (1, x1), (2, x0), (3, x1)]:
        assert torch.equal(words[:, col], want), col


def _run_with_threads(threads: int, args: tuple, gz: torch.Tensor, gkl: torch.Tensor) -> list[torch.Tensor]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mu, a, *rest = args
        z, kl = torch.ops.medhpc.vib_reparam(mu, a, *rest)
        grads = torch.ops.medhpc._vib_reparam_backward(gz, gkl, mu, a, *rest[1:])
        return [z, kl, *grads]
    finally:
        torch.set_num_threads(old)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_results_are_bit_identical_run_to_run_and_across_thread_counts(dtype: torch.dtype) -> None:
    torch.manual_seed(7)
    cases = [
        (torch.randn(37, 203, dtype=dtype), torch.randn(37, 203, dtype=dtype) * 3, 5, 17, 3, True, False, 1),
        (torch.randn(30, 256, dtype=dtype), torch.randn(30, 256, dtype=dtype) * 3, 3, 2, 0, False, True, 2),
        (torch.randn(11, 9, dtype=dtype), torch.randn(11, 9, dtype=dtype) * 3, 4, 5, 1, True, True, 3),
    ]
    for args in cases:
        gz = torch.randn(args[2], *args[0].shape, dtype=dtype)
        gkl = torch.randn(args[0].shape[0], dtype=dtype)
        first = _run_with_threads(1, args, gz, gkl)
        for threads in (1, 2, 3, 4):
            again = _run_with_threads(threads, args, gz, gkl)
            for x, y in zip(first, again, strict=True):
                assert torch.equal(x, y), threads


# --- dtype contract: computed in float32 (float64), returned in the inputs' dtype ---------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_computed_in_float32_and_returned_in_their_dtype(
    device: str, dtype: torch.dtype
) -> None:
    torch.manual_seed(8)
    mu = torch.randn(6, 10, device=device).to(dtype).requires_grad_(True)
    a = (torch.randn(6, 10, device=device) * 3).to(dtype).requires_grad_(True)
    z, kl = vib_reparam(mu, a, 3, seed=4, offset=1, share_rows=2, kl_reduction="mean")
    assert z.dtype == dtype and kl.dtype == dtype
    mu32, a32 = mu.detach().float().requires_grad_(True), a.detach().float().requires_grad_(True)
    z32, kl32 = vib_reparam(mu32, a32, 3, seed=4, offset=1, share_rows=2, kl_reduction="mean")
    assert torch.equal(z, z32.to(dtype)) and torch.equal(kl, kl32.to(dtype))
    gz, gkl = torch.randn_like(z), torch.randn_like(kl)
    got = torch.autograd.grad((z, kl), (mu, a), (gz, gkl))
    want = torch.autograd.grad((z32, kl32), (mu32, a32), (gz.float(), gkl.float()))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert torch.equal(g, w.to(dtype))


def test_cpu_autocast_bfloat16_encoder_gets_bfloat16_samples() -> None:
    """Under CPU autocast the encoder's Linear layers hand bf16 mu, a to the op (as on CUDA)."""
    torch.manual_seed(9)
    enc_mu, enc_a = torch.nn.Linear(12, 8), torch.nn.Linear(12, 8)
    h = torch.randn(4, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, a = enc_mu(h), enc_a(h)
        assert mu.dtype == torch.bfloat16
        z, kl = vib_reparam(mu, a, 2, seed=3)
        loss = z.float().sum() + kl.float().sum()
    assert z.dtype == torch.bfloat16 and kl.dtype == torch.bfloat16
    z32, kl32 = vib_reparam(mu.detach().float(), a.detach().float(), 2, seed=3)
    assert torch.equal(z, z32.to(torch.bfloat16)) and torch.equal(kl, kl32.to(torch.bfloat16))
    loss.backward()
    assert enc_mu.weight.grad is not None and torch.isfinite(enc_mu.weight.grad).all()
    assert enc_a.weight.grad is not None and enc_a.weight.grad.dtype == torch.float32


def test_float64_stays_float64_and_integers_are_refused() -> None:
    mu = torch.randn(2, 3, dtype=torch.float64)
    z, kl = vib_reparam(mu, mu, 1, seed=0)
    assert z.dtype == torch.float64 and kl.dtype == torch.float64
    with pytest.raises(TypeError, match="floating-point"):
        vib_reparam(mu.long(), mu.long(), 1, seed=0)


@needs_ext
@pytest.mark.parametrize("copy", ["default", "avx2"])
def test_cpu_kernel_copies_agree_with_the_widest_one(copy: str, tmp_path: Path) -> None:
    """The DEFAULT, AVX2 and AVX-512 copies of the CPU kernel (MEDHPC_CPU_VEC caps the choice)
    give the same numbers within rounding: Sleef and std:: differ only in the last ulp."""
    import os
    import subprocess
    import sys

    script = (
        "import torch, medhpc.ops\n"
        "g = torch.Generator().manual_seed(0)\n"
        "mu = torch.randn(9, 37, generator=g); a = torch.randn(9, 37, generator=g) * 3\n"
        "z, kl = torch.ops.medhpc.vib_reparam(mu, a, 3, 5, 2, True, False, 2)\n"
        "gz, gkl = torch.ones_like(z), torch.ones_like(kl)\n"
        "gm, ga = torch.ops.medhpc._vib_reparam_backward(gz, gkl, mu, a, 5, 2, True, False, 2)\n"
        "torch.save([z, kl, gm, ga], {out!r})\n"
    )
    outs = []
    for env_copy in (copy, None):
        out = str(tmp_path / f"{env_copy}.pt")
        env = {k: v for k, v in os.environ.items() if k != "MEDHPC_CPU_VEC"}
        if env_copy is not None:
            env["MEDHPC_CPU_VEC"] = env_copy
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        subprocess.run([sys.executable, "-c", script.format(out=out)], check=True, env=env, cwd=root)
        outs.append(torch.load(out))
    for x, y in zip(*outs, strict=True):
        torch.testing.assert_close(x, y, **TOL[torch.float32])
