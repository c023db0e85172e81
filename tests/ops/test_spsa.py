"""medhpc::spsa_perturb / spsa_reduce: kernels held to the reference, and the properties the
SPSA attack relies on (antithetic pairs, clip range, chunking, an unbiased gradient estimate)."""

from __future__ import annotations

import pytest
import torch

from medhpc import _ext
from medhpc.ops import reference, spsa_perturb, spsa_reduce
from medhpc.ops.spsa import sample_inputs

needs_ext = pytest.mark.skipif(not _ext.loaded(), reason=f"medhpc._C not loaded: {_ext.LOAD_ERROR}")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
TOL = {torch.float64: {"rtol": 1e-12, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_match_reference(device: str, dtype: torch.dtype) -> None:
    inputs = sample_inputs(device, dtype)
    for args in inputs["spsa_perturb"]:
        want = reference.spsa_perturb(*args)
        assert torch.equal(torch.ops.medhpc.spsa_perturb(*args), want), args[1:]
        out = torch.full_like(want, float("nan"))
        torch.ops.medhpc.spsa_perturb_out(*args, out)
        assert torch.equal(out, want), args[1:]
    for args in inputs["spsa_reduce"]:
        got = torch.ops.medhpc.spsa_reduce(*args)
        torch.testing.assert_close(got, reference.spsa_reduce(*args), **TOL[dtype])


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(device: str, dtype: torch.dtype) -> None:
    """Half and bfloat16 on every device (one dtype contract for the schema): computed in float,
    rounded once, so the probes equal the reference's bit for bit."""
    inputs = sample_inputs(device, dtype)
    for args in inputs["spsa_perturb"]:
        assert torch.equal(torch.ops.medhpc.spsa_perturb(*args), reference.spsa_perturb(*args)), args[1:]
    for args in inputs["spsa_reduce"]:
        got = torch.ops.medhpc.spsa_reduce(*args)
        torch.testing.assert_close(got, reference.spsa_reduce(*args), rtol=2e-2, atol=2e-2)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device: str) -> None:
    inputs = sample_inputs(device)
    for args in inputs["spsa_perturb"]:
        torch.library.opcheck(torch.ops.medhpc.spsa_perturb.default, args)
        out = torch.empty_like(reference.spsa_perturb(*args))
        torch.library.opcheck(torch.ops.medhpc.spsa_perturb_out.default, (*args, out))
    for args in inputs["spsa_reduce"]:
        torch.library.opcheck(torch.ops.medhpc.spsa_reduce.default, args)


def _schedule_cases(dtype: torch.dtype) -> list[tuple[object, ...]]:
    """spsa_reduce arguments for the CUDA schedule: every count mod 4 (short last groups), one
    to several groups (both shared buffers reused), ragged and sub-lane tiles, first > 0."""
    g = torch.Generator().manual_seed(1)
    cases: list[tuple[object, ...]] = []
    for count, image, first in [
        (1, [3, 40, 40], 0),  # 4800 elements: a full and a ragged tile
        (2, [1, 7, 9], 3),  # 63 elements: one tile, two lanes' blocks partly used
        (3, [10], 0),  # fewer elements than lanes
        (4, [2, 20, 20], 2),
        (5, [3, 40, 40], 1),
        (7, [4097], 0),  # one element in the second tile
        (9, [2, 64, 64], 11),  # 8192 elements: two full tiles; three groups
        (14, [5, 30], 0),
    ]:
        losses = torch.randn(3, 2 * count, generator=g, dtype=torch.float64).to(dtype)
        cases.append((losses, image, first, 0.05, 2**40 + 3, 17, 2 * count + 1))
    return cases


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_reduce_schedule_matches_cpu_kernel_bit_for_bit(dtype: torch.dtype) -> None:
    """The CUDA spsa_reduce schedule (each Philox block drawn once, shared through shared memory,
    directions summed in ascending order), run serially on the host by _spsa_reduce_schedule,
    gives the CPU kernel's numbers bit for bit: the same sums in the same order."""
    cases = _schedule_cases(dtype) + [tuple(a) for a in sample_inputs("cpu", dtype)["spsa_reduce"]]
    for args in cases:
        got = torch.ops.medhpc._spsa_reduce_schedule(*args)
        want = torch.ops.medhpc.spsa_reduce(*args)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want), args[1:]


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_reduce_schedule_matches_reference_exactly(dtype: torch.dtype) -> None:
    """With losses that are small integers and 2 delta total a power of two every partial sum is
    exact, so any summation order gives the same bits: the schedule equals the reference exactly,
    also for half and bfloat16 losses (accumulated in float)."""
    g = torch.Generator().manual_seed(2)
    for count, image, first in [(1, [3, 40, 40], 0), (6, [1, 7, 9], 5), (11, [2, 64, 64], 0)]:
        losses = torch.randint(-8, 9, (2, 2 * count), generator=g).to(dtype)
        args = (losses, image, first, 0.5, 99, 4, 16)
        got = torch.ops.medhpc._spsa_reduce_schedule(*args)
        want = reference.spsa_reduce(*args)
        assert got.dtype == want.dtype == dtype
        assert torch.equal(got, want), args[1:]


@needs_ext
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_reduce_is_its_schedule_bit_for_bit(dtype: torch.dtype) -> None:
    """On the GPU: the CUDA kernel gives exactly what its host emulation gives (and so, for
    float32/float64, what the CPU kernel gives)."""
    for args in _schedule_cases(dtype):
        losses, *rest = args
        assert isinstance(losses, torch.Tensor)
        got = torch.ops.medhpc.spsa_reduce(losses.cuda(), *rest).cpu()
        assert torch.equal(got, torch.ops.medhpc._spsa_reduce_schedule(*args)), rest


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_takes_an_empty_batch(dtype: torch.dtype) -> None:
    """A batch of no images gives empty probes and an empty estimate of the right shapes, as the
    kernels do (the reference used to fail reshaping 0 elements to (0, 1, -1))."""
    x = torch.rand(0, 3, 8, 8, dtype=dtype)
    probes = reference.spsa_perturb(x, 0, 2, 0.1, 1, 0, 0.0, 1.0)
    assert probes.shape == (0, 4, 3, 8, 8) and probes.dtype == dtype
    grad = reference.spsa_reduce(torch.rand(0, 4, dtype=dtype), [3, 8, 8], 0, 0.1, 1, 0, 2)
    assert grad.shape == (0, 3, 8, 8) and grad.dtype == dtype
    if _ext.loaded():
        kernel_probes = torch.ops.medhpc.spsa_perturb(x, 0, 2, 0.1, 1, 0, 0.0, 1.0)
        kernel_grad = torch.ops.medhpc.spsa_reduce(torch.rand(0, 4, dtype=dtype), [3, 8, 8], 0, 0.1, 1, 0, 2)
        assert (kernel_probes.shape, kernel_probes.dtype) == (probes.shape, probes.dtype)
        assert (kernel_grad.shape, kernel_grad.dtype) == (grad.shape, grad.dtype)


def test_rademacher_is_balanced_and_uncorrelated() -> None:
    v = reference.rademacher(4, 3 * 4096 + 100, 0, 32, seed=9, offset=0, dtype=torch.float64)
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    n = v.numel()
    assert abs(v.mean().item()) < 5 / n**0.5

    def corr(x: torch.Tensor, y: torch.Tensor) -> float:
        return (x * y).mean().item()  # mean-zero, unit-variance entries

    flat = v.reshape(-1)
    assert abs(corr(v[:, 0], v[:, 1])) < 5 / v[:, 0].numel() ** 0.5  # across directions
    assert abs(corr(v[0], v[1])) < 5 / v[0].numel() ** 0.5  # across images
    assert abs(corr(flat[:-1], flat[1:])) < 5 / n**0.5  # neighbouring elements (lanes)
    assert abs(corr(flat[:-32], flat[32:])) < 5 / n**0.5  # neighbouring bits of one block
    other_seed = reference.rademacher(4, 3 * 4096 + 100, 0, 32, seed=10, offset=0, dtype=torch.float64)
    other_offset = reference.rademacher(4, 3 * 4096 + 100, 0, 32, seed=9, offset=1, dtype=torch.float64)
    assert abs(corr(v, other_seed)) < 5 / n**0.5
    assert abs(corr(v, other_offset)) < 5 / n**0.5


@pytest.mark.parametrize("device", DEVICES)
def test_probes_are_antithetic_and_clipped(device: str) -> None:
    x = torch.rand(3, 2, 30, 30, device=device)
    out = spsa_perturb(x, 0, 6, delta=0.05, seed=1, offset=2, clip=(0.0, 1.0))
    assert out.shape == (3, 12, 2, 30, 30)
    assert out.min() >= 0.0 and out.max() <= 1.0
    plus, minus = out[:, 0::2], out[:, 1::2]
    inside = (x > 0.05) & (x < 0.95)
    step = (plus - x[:, None]) / 0.05
    mask = inside[:, None].expand_as(plus)
    torch.testing.assert_close((plus + minus)[mask], (2 * x[:, None].expand_as(plus))[mask])
    torch.testing.assert_close(step[mask].abs(), torch.ones_like(step[mask]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_chunks_compose(device: str) -> None:
    x = torch.rand(2, 3, 50, 50, device=device)
    whole = spsa_perturb(x, 0, 8, delta=0.01, seed=4, offset=7)
    part = spsa_perturb(x, 5, 3, delta=0.01, seed=4, offset=7)
    assert torch.equal(whole[:, 10:], part)
    losses = torch.randn(2, 16, device=device, dtype=torch.float64)
    full = spsa_reduce(losses, x.shape[1:], 0, delta=0.01, seed=4, offset=7, total=8)
    chunked = spsa_reduce(losses[:, :10], x.shape[1:], 0, delta=0.01, seed=4, offset=7, total=8) + spsa_reduce(
        losses[:, 10:], x.shape[1:], 5, delta=0.01, seed=4, offset=7, total=8
    )
    torch.testing.assert_close(full, chunked, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_estimate_recovers_gradient_of_linear_loss(device: str) -> None:
    """For L(x) = <w, x> the estimate is mean_i <w, v_i> v_i, which tends to w."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, 1, 6, 6, generator=gen, dtype=torch.float64).to(device)
    x = torch.rand(2, 1, 6, 6, generator=gen, dtype=torch.float64).to(device)
    n, delta = 4096, 0.01
    probes = spsa_perturb(x, 0, n, delta=delta, seed=3, clip=(-float("inf"), float("inf")))
    losses = (probes * w[:, None]).flatten(2).sum(-1)
    est = spsa_reduce(losses, x.shape[1:], 0, delta=delta, seed=3, total=n)
    for b in range(2):
        cos = torch.nn.functional.cosine_similarity(est[b].flatten(), w[b].flatten(), dim=0)
        assert cos > 0.95
    torch.testing.assert_close(est, w, atol=0.25 * w.abs().max().item(), rtol=0)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments_name_themselves(device: str) -> None:
    x = torch.rand(2, 3, 4, 4, device=device)
    perturb, reduce = torch.ops.medhpc.spsa_perturb, torch.ops.medhpc.spsa_reduce
    with pytest.raises(RuntimeError, match="x must be a batch"):
        perturb(torch.rand(5, device=device), 0, 1, 0.01, 0, 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="delta must be > 0"):
        perturb(x, 0, 1, 0.0, 0, 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="clip_min"):
        perturb(x, 0, 1, 0.01, 0, 0, 1.0, 0.0)
    with pytest.raises(RuntimeError, match="count must be >= 1"):
        perturb(x, 0, 0, 0.01, 0, 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="offset must be in"):
        perturb(x, 0, 1, 0.01, 0, 2**32, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="seed must be >= 0"):
        perturb(x, 0, 1, 0.01, -1, 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="spsa_perturb"):
        perturb(x.long(), 0, 1, 0.01, 0, 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="out must have shape"):
        torch.ops.medhpc.spsa_perturb_out(x, 0, 2, 0.01, 0, 0, 0.0, 1.0, torch.empty(2, 3, 3, 4, 4, device=device))
    with pytest.raises(RuntimeError, match="out must have x's dtype"):
        out64 = torch.empty(2, 4, 3, 4, 4, device=device, dtype=torch.float64)
        torch.ops.medhpc.spsa_perturb_out(x, 0, 2, 0.01, 0, 0, 0.0, 1.0, out64)
    with pytest.raises(RuntimeError, match="out must be contiguous"):
        strided = torch.empty(2, 4, 3, 4, 8, device=device)[..., ::2]
        torch.ops.medhpc.spsa_perturb_out(x, 0, 2, 0.01, 0, 0, 0.0, 1.0, strided)
    with pytest.raises(RuntimeError, match=r"losses must be \(B, 2\*count\)"):
        reduce(torch.rand(2, 3, device=device), [3, 4, 4], 0, 0.01, 0, 0, 1)
    with pytest.raises(RuntimeError, match="total must be >= 1"):
        reduce(torch.rand(2, 4, device=device), [3, 4, 4], 0, 0.01, 0, 0, 0)
