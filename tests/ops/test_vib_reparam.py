"""medhpc::vib_reparam: compiled kernels held to the pure-PyTorch reference.

Values, gradients (float64 gradcheck and reference autograd), opcheck, noise statistics,
determinism, non-contiguous inputs and error messages, on CPU and (marked gpu) on CUDA.
"""

from __future__ import annotations

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
