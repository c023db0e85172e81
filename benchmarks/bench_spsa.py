"""SPSA finite differences: fused perturb + reduce vs eager PyTorch, and bytes vs bandwidth.

One SPSA gradient estimate for a batch of images at n = 128 directions (256 probes): write
the probes ``clip(x +- delta v)`` (what the model then reads) and reduce 256 losses per image
back into the estimate. Three implementations do the same work:

* ``fused``: ``medhpc.ops.spsa_perturb(out=buffer)`` + ``spsa_reduce``, directions regenerated,
  never stored, probes written into a reused input buffer (how the attack calls it);
* ``fused_alloc``: the same with a fresh probe tensor per call (on the CPU a fresh 150 MB
  tensor costs more in page faults than writing the probes);
* ``eager``: the usual PyTorch way (torchattacks-style): draw ``v`` with ``torch.randint``,
  materialise it, build the probes with ``stack``, reduce with a batched matmul;
* ``reference``: ``medhpc.ops.reference`` (Philox in plain PyTorch; the specification, slow).

``extra_info`` records the bytes the fused kernels must move (probes written, image read,
estimate written) and, measured in the same run, the device's copy bandwidth, so the run
reports how close to the memory-bandwidth limit the kernels are. Run:

    .venv/bin/python -m pytest benchmarks/bench_spsa.py --benchmark-only
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

from medhpc.ops import reference, spsa_perturb, spsa_reduce

N_DIRECTIONS = 128
DELTA = 0.01
SHAPES = {"3x224": (3, 224, 224), "3x299": (3, 299, 299)}
DEVICES = [
    pytest.param("cpu", id="cpu"),
    # `gpu` so that `-m gpu` selects these rows; the skip (benchmarks/ is outside tests/, whose
    # conftest.py skips gpu items) makes a run without a GPU report them skipped, with the reason.
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(
                not torch.cuda.is_available(), reason="needs a CUDA device: run on the GPU machine (-m gpu)"
            ),
        ],
    ),
]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str, nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Best-of-``repeats`` bytes/s of a large device-to-device copy (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


_BUFFERS: dict[tuple[object, ...], torch.Tensor] = {}


def fused(x: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    key = (tuple(x.shape), x.dtype, x.device)
    if key not in _BUFFERS:
        _BUFFERS.clear()
        _BUFFERS[key] = x.new_empty((x.shape[0], 2 * N_DIRECTIONS, *x.shape[1:]))
    probes = spsa_perturb(x, 0, N_DIRECTIONS, delta=DELTA, seed=1, offset=0, out=_BUFFERS[key])
    grad = spsa_reduce(losses, x.shape[1:], 0, delta=DELTA, seed=1, offset=0, total=N_DIRECTIONS)
    return probes, grad


def fused_alloc(x: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probes = spsa_perturb(x, 0, N_DIRECTIONS, delta=DELTA, seed=1, offset=0)
    grad = spsa_reduce(losses, x.shape[1:], 0, delta=DELTA, seed=1, offset=0, total=N_DIRECTIONS)
    return probes, grad


def eager(x: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch = x.shape[0]
    gen = torch.Generator(x.device).manual_seed(1)  # same directions for probes and reduce
    v = torch.randint(0, 2, (batch, N_DIRECTIONS, *x.shape[1:]), device=x.device, dtype=x.dtype, generator=gen)
    v = v * 2 - 1
    pair = torch.stack([(x[:, None] + DELTA * v).clamp(0, 1), (x[:, None] - DELTA * v).clamp(0, 1)], dim=2)
    probes = pair.reshape(batch, 2 * N_DIRECTIONS, *x.shape[1:])  # +/- pairs adjacent, as the op
    diff = (losses[:, 0::2] - losses[:, 1::2]) / (2 * DELTA * N_DIRECTIONS)
    grad = torch.bmm(diff[:, None, :], v.flatten(2)).reshape(x.shape)
    return probes, grad


def ref(x: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probes = reference.spsa_perturb(x, 0, N_DIRECTIONS, DELTA, 1, 0, 0.0, 1.0)
    grad = reference.spsa_reduce(losses, list(x.shape[1:]), 0, DELTA, 1, 0, N_DIRECTIONS)
    return probes, grad


IMPLS: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "fused": fused,
    "fused_alloc": fused_alloc,
    "eager": eager,
    "reference": ref,
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("device", DEVICES)
def bench_spsa_perturb_reduce(benchmark, device: str, shape: str, impl: str) -> None:
    if impl == "reference" and device == "cpu" and shape == "3x299":
        pytest.skip("the Philox-in-PyTorch reference needs ~8 GB here; 3x224 shows its speed")
    torch.manual_seed(0)
    batch = 1 if device == "cpu" else 8
    image = SHAPES[shape]
    x = torch.rand(batch, *image, device=device)
    losses = torch.randn(batch, 2 * N_DIRECTIONS, device=device)
    fn = IMPLS[impl]

    def run() -> None:
        fn(x, losses)
        _sync(device)

    run()  # warm-up (allocator, first launch)
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=0)
    numel = batch * torch.Size(image).numel()
    moved = 4 * (numel + 2 * N_DIRECTIONS * numel + batch * 2 * N_DIRECTIONS + numel)
    bandwidth = copy_bandwidth(device)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "impl": impl,
            "batch": batch,
            "image": shape,
            "directions": N_DIRECTIONS,
            "bytes_moved": moved,
            "copy_bandwidth_GBps": round(bandwidth / 1e9, 2),
            "achieved_GBps": round(moved / median / 1e9, 2),
            "fraction_of_bandwidth": round(moved / median / bandwidth, 3),
        }
    )


def test_implementations_do_the_same_work() -> None:
    """The eager baseline draws other directions, so compare what must agree: probes lie at
    +-delta around x inside the clip range, and both estimates recover a linear loss's gradient."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 0.8 + 0.1
    w = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    for impl in ("fused", "fused_alloc", "eager"):
        probes, _ = IMPLS[impl](x, torch.zeros(1, 2 * N_DIRECTIONS, dtype=torch.float64))
        assert torch.allclose((probes - x[:, None]).abs(), torch.full_like(probes, DELTA))
        losses = (probes * w[:, None]).flatten(2).sum(-1)
        _, grad = IMPLS[impl](x, losses)
        cos = torch.nn.functional.cosine_similarity(grad.flatten(), w.flatten(), dim=0)
        assert cos > 0.3, impl  # 128 directions in 768 dims: cos ~ sqrt(128/768) = 0.41
    torch.testing.assert_close(fused(x, losses)[0], ref(x, losses)[0])
    torch.testing.assert_close(fused(x, losses)[1], ref(x, losses)[1])
