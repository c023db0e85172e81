"""Self-test of the compiled ops: each against its pure-PyTorch reference, in fp32 and bf16, at
scale (past int32 indexing), run to run, and under a busy side stream.

The references run on the CPU (the kernels must give on this device what the specification
gives there), except in the large case, where the reference runs on the device in chunks.
What is bit-identical and what is equal to a tolerance follows the ops' documented contract:
SPSA probes are exact on every device; VIB samples, KL and the SPSA estimate are equal to
float tolerance across devices and bit-identical run to run.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import torch

from medhpc import _ext
from medhpc.ops import OPS, reference, spsa_perturb, spsa_reduce, vib_reparam
from medhpc.selftest.runner import Check, CheckFailed, Context

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: (rtol, atol) of values computed in float32 on two devices, and of bf16 results.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1.6e-2, 1e-3)}
GRAD_TOLERANCE = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (1.6e-2, 1e-3)}
SEED, OFFSET = 2**40 + 7, 3


def _close(name: str, got: torch.Tensor, want: torch.Tensor, tol: tuple[float, float]) -> None:
    """Raise CheckFailed naming the tensor, its worst element and the tolerance."""
    got, want = got.detach().cpu(), want.detach().cpu()
    if got.shape != want.shape or got.dtype != want.dtype:
        raise CheckFailed(f"{name}: got {tuple(got.shape)} {got.dtype}, want {tuple(want.shape)} {want.dtype}")
    g, w = got.double(), want.double()
    rtol, atol = tol
    bad = ~torch.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        err = (g - w).abs().nan_to_num(float("inf"))
        i = int(err.flatten().argmax())
        raise CheckFailed(
            f"{name}: {int(bad.sum())} of {bad.numel()} differ beyond rtol {rtol:g}, atol {atol:g}; worst at "
            f"flat {i}: {g.flatten()[i].item():.7g} vs {w.flatten()[i].item():.7g}"
        )


def _equal(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = got.detach().cpu(), want.detach().cpu()
    if got.shape != want.shape or got.dtype != want.dtype or not torch.equal(got, want):
        diff = "shape or dtype" if got.shape != want.shape or got.dtype != want.dtype else (
            f"{int((got != want).sum())} of {got.numel()} elements"
        )  # fmt: skip
        raise CheckFailed(f"{name}: not bit-identical ({diff})")


def _require_kernel(ctx: Context, op: str) -> None:
    if not _ext.has_kernel(op, ctx.device.type):
        why = f"medhpc._C did not load: {_ext.LOAD_ERROR}" if not _ext.loaded() else "not compiled in"
        raise CheckFailed(f"no {ctx.device.type} kernel for {op} ({why}): the op would fall back to its reference")


def check_kernels(ctx: Context) -> str:
    """The extension loads and has a kernel for every op on this device (and CUDA, if required)."""
    if not _ext.loaded():
        raise CheckFailed(f"medhpc._C did not load: {_ext.LOAD_ERROR}")
    devices = ["cpu", "cuda"] if ctx.require_cuda_kernels or ctx.cuda else ["cpu"]
    missing = [f"{d}:{op}" for d in devices for op in OPS if not _ext.has_kernel(op, d)]
    if missing:
        raise CheckFailed(f"no kernel for {', '.join(missing)}")
    where = f" on {torch.cuda.get_device_name(ctx.device)}" if ctx.cuda else ""
    return f"{len(OPS)} ops with {' and '.join(d.upper() for d in devices)} kernels{where}"


def _vib_inputs(ctx: Context, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, k = ctx.scale.vib_batch, ctx.scale.vib_latent
    mu = torch.randn(b, k, generator=g).to(dtype)
    a = (torch.randn(b, k, generator=g) * 4 + 2).to(dtype)  # both sides of the ReLU and the threshold
    return mu, a


def _vib_run(
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]], mu: torch.Tensor, a: torch.Tensor, samples: int
) -> tuple[torch.Tensor, ...]:
    """z, kl and the gradients of a fixed weighting of both, for one implementation."""
    mu = mu.detach().requires_grad_(True)
    a = a.detach().requires_grad_(True)
    z, kl = fn(mu, a, samples)
    g = torch.Generator().manual_seed(1)
    wz = torch.randn(z.shape, generator=g).to(z.device, z.dtype)
    wkl = torch.randn(kl.shape, generator=g).to(kl.device, kl.dtype)
    grad_mu, grad_a = torch.autograd.grad((z * wz).sum() + (kl * wkl).sum(), (mu, a))
    return z.detach(), kl.detach(), grad_mu, grad_a


def _vib_fused(ctx: Context) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def run(mu: torch.Tensor, a: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        return vib_reparam(mu, a, samples, seed=SEED, offset=OFFSET, relu=True, kl_reduction="sum")

    return run


def _vib_reference(mu: torch.Tensor, a: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.vib_reparam(mu, a, samples, SEED, OFFSET, True, False)


def vib_check(dtype_name: str) -> Callable[[Context], str]:
    dtype = DTYPES[dtype_name]

    def run(ctx: Context) -> str:
        _require_kernel(ctx, "vib_reparam")
        mu, a = _vib_inputs(ctx, dtype)
        got = _vib_run(_vib_fused(ctx), mu.to(ctx.device), a.to(ctx.device), ctx.scale.vib_samples)
        want = _vib_run(_vib_reference, mu, a, ctx.scale.vib_samples)
        for name, g, w in zip(("z", "kl"), got[:2], want[:2], strict=True):
            _close(name, g, w, TOLERANCE[dtype])
        for name, g, w in zip(("grad mu", "grad a"), got[2:], want[2:], strict=True):
            _close(name, g, w, GRAD_TOLERANCE[dtype])
        s, b, k = got[0].shape
        return f"forward and backward, S={s} B={b} K={k}: equal to the reference within {TOLERANCE[dtype]}"

    return run


def _spsa_input(ctx: Context, dtype: torch.dtype, batch: int, image: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.rand(batch, *image, generator=g).to(dtype)


def spsa_perturb_check(dtype_name: str) -> Callable[[Context], str]:
    dtype = DTYPES[dtype_name]

    def run(ctx: Context) -> str:
        _require_kernel(ctx, "spsa_perturb")
        _require_kernel(ctx, "spsa_perturb_out")
        sc = ctx.scale
        x = _spsa_input(ctx, dtype, sc.spsa_batch, sc.spsa_image)
        want = reference.spsa_perturb(x, 5, sc.spsa_count, 0.01, SEED, OFFSET, 0.0, 1.0)
        got = spsa_perturb(x.to(ctx.device), 5, sc.spsa_count, delta=0.01, seed=SEED, offset=OFFSET)
        _equal("spsa_perturb", got, want)
        out = torch.full_like(got, float("nan"))
        spsa_perturb(x.to(ctx.device), 5, sc.spsa_count, delta=0.01, seed=SEED, offset=OFFSET, out=out)
        _equal("spsa_perturb_out", out, want)
        return f"{tuple(got.shape)} probes, also into a buffer: bit-identical to the reference"

    return run


def spsa_reduce_check(dtype_name: str) -> Callable[[Context], str]:
    dtype = DTYPES[dtype_name]

    def run(ctx: Context) -> str:
        _require_kernel(ctx, "spsa_reduce")
        sc = ctx.scale
        g = torch.Generator().manual_seed(3)
        losses = torch.randn(sc.spsa_batch, 2 * sc.spsa_count, generator=g).to(dtype)
        shape = list(sc.spsa_image)
        total = 4 * sc.spsa_count
        want = reference.spsa_reduce(losses, shape, 5, 0.01, SEED, OFFSET, total)
        got = spsa_reduce(losses.to(ctx.device), shape, 5, delta=0.01, seed=SEED, offset=OFFSET, total=total)
        _close("spsa_reduce", got, want, GRAD_TOLERANCE[dtype])
        return (
            f"{sc.spsa_count} directions onto {tuple(got.shape)}: equal to the reference within {GRAD_TOLERANCE[dtype]}"
        )

    return run


def check_large(ctx: Context) -> str:
    """SPSA probes whose output has more elements than an int32 can index (on a GPU)."""
    _require_kernel(ctx, "spsa_perturb")
    _require_kernel(ctx, "spsa_reduce")
    sc = ctx.scale
    x = _spsa_input(ctx, torch.float32, sc.large_batch, sc.large_image).to(ctx.device)
    probes = spsa_perturb(x, 0, sc.large_count, delta=0.01, seed=SEED, offset=OFFSET)
    numel = probes.numel()
    # The first and the last direction of every image: the last lies past 2^31 elements.
    for k in (0, sc.large_count - 1):
        want = reference.spsa_perturb(x, k, 1, 0.01, SEED, OFFSET, 0.0, 1.0)
        _equal(f"probes of direction {k}", probes[:, 2 * k : 2 * k + 2], want)
    del probes
    g = torch.Generator().manual_seed(4)
    losses = torch.randn(sc.large_batch, 2 * sc.large_count, generator=g).to(ctx.device)
    got = spsa_reduce(losses, list(sc.large_image), 0, delta=0.01, seed=SEED, offset=OFFSET, total=sc.large_count)
    want = torch.zeros_like(got)
    chunk = 8
    for first in range(0, sc.large_count, chunk):
        part = losses[:, 2 * first : 2 * (first + chunk)]
        want += reference.spsa_reduce(part, list(sc.large_image), first, 0.01, SEED, OFFSET, sc.large_count)
    _close("spsa_reduce", got, want, GRAD_TOLERANCE[torch.float32])
    past = "past 2^31" if numel > 2**31 else "below 2^31 at CPU scale"
    return f"{numel:.3g} probe elements ({past}): first and last directions exact; estimate matches"


def _all_ops(ctx: Context, x: torch.Tensor, mu: torch.Tensor, a: torch.Tensor) -> list[torch.Tensor]:
    sc = ctx.scale
    out = list(_vib_run(_vib_fused(ctx), mu, a, sc.vib_samples))
    out.append(spsa_perturb(x, 0, sc.spsa_count, delta=0.01, seed=SEED, offset=OFFSET))
    losses = out[-1].flatten(1).sum(1, keepdim=True).expand(-1, 2 * sc.spsa_count).contiguous()
    losses = losses + torch.arange(2 * sc.spsa_count, device=x.device, dtype=x.dtype)
    out.append(spsa_reduce(losses, list(sc.spsa_image), 0, delta=0.01, seed=SEED, offset=OFFSET, total=sc.spsa_count))
    return out


OUTPUTS = ("z", "kl", "grad mu", "grad a", "spsa probes", "spsa estimate")


def check_determinism(ctx: Context) -> str:
    """Every op twice from the same inputs and stream: bit-identical outputs."""
    for op in OPS:
        _require_kernel(ctx, op)
    mu, a = (t.to(ctx.device) for t in _vib_inputs(ctx, torch.float32))
    x = _spsa_input(ctx, torch.float32, ctx.scale.spsa_batch, ctx.scale.spsa_image).to(ctx.device)
    first = _all_ops(ctx, x, mu, a)
    second = _all_ops(ctx, x, mu, a)
    for name, f, s in zip(OUTPUTS, first, second, strict=True):
        _equal(name, s, f)
    return f"{len(OUTPUTS)} outputs of {len(OPS)} ops bit-identical run to run"


def check_side_stream(ctx: Context) -> str:
    """The kernels run on the caller's stream: on a side stream whose input arrives late (after a
    long sleep), a kernel on any other stream would read it before it is written. On the CPU, the
    same ops from four threads at once must give the serial results."""
    for op in OPS:
        _require_kernel(ctx, op)
    mu, a = (t.to(ctx.device) for t in _vib_inputs(ctx, torch.float32))
    x = _spsa_input(ctx, torch.float32, ctx.scale.spsa_batch, ctx.scale.spsa_image).to(ctx.device)
    want = _all_ops(ctx, x, mu, a)
    if ctx.cuda:
        ctx.sync()
        side = torch.cuda.Stream(ctx.device)
        with torch.cuda.stream(side):
            late = [torch.full_like(t, float("nan")) for t in (x, mu, a)]
            torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU clock: the inputs land long after the launch
            for dst, src in zip(late, (x, mu, a), strict=True):
                dst.copy_(src)
            got = _all_ops(ctx, *late)
        torch.cuda.current_stream(ctx.device).wait_stream(side)
        for name, g, w in zip(OUTPUTS, got, want, strict=True):
            _equal(f"{name} on a side stream", g, w)
        return "all ops on a non-default stream with late inputs: identical to the default stream"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _all_ops(ctx, x, mu, a), range(4)))
    for got in results:
        for name, g, w in zip(OUTPUTS, got, want, strict=True):
            _equal(f"{name} from a concurrent thread", g, w)
    return "all ops from 4 threads at once: identical to the serial run"


CHECKS: tuple[Check, ...] = (
    Check("kernels", "the extension loads with a kernel for every op", check_kernels),
    *(
        Check(f"vib_reparam {d}", f"VIB sampling, KL and gradients in {d} vs the reference", vib_check(d))
        for d in DTYPES
    ),
    *(Check(f"spsa_perturb {d}", f"SPSA probes in {d} vs the reference", spsa_perturb_check(d)) for d in DTYPES),
    *(Check(f"spsa_reduce {d}", f"SPSA estimate in {d} vs the reference", spsa_reduce_check(d)) for d in DTYPES),
    Check("spsa > 2^31 elements", "SPSA probes for 32 images at 3x299^2, 256 probes each", check_large),
    Check("determinism", "every op twice: bit-identical", check_determinism),
    Check("side stream", "ops on a busy side stream (threads on the CPU)", check_side_stream),
)
