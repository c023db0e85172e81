"""CW-L2: medhpc against foolbox 3.3.4's ``L2CarliniWagnerAttack`` at an equal budget, with early
abort on and off: time per image, model calls, success rate and L2 of the successes.

Everything runs in one process on the same model and inputs: the small CNN the attack tests
train (tests/attacks/conftest.py's ``SmallCNN`` on its blob images, the recipe copied here so
that the benchmark's model does not move with the tests), eval mode, on ``B`` held-out 3x16x16
images with their true labels, at 5 search steps x 200 Adam iterations, lr 5e-3, c0 1e-2, κ 0
in both. The implementations:

=================  =====================================================================
``medhpc``         ``cw_l2`` at its defaults (warm starts between search steps)
``medhpc-restart`` ``cw_l2(warm_start=False)``: every search step restarts from x, as foolbox
``foolbox``        ``L2CarliniWagnerAttack``; its early abort stops a search step when the
                   batch's summed loss stalls, medhpc's freezes each image whose own loss stalls
=================  =====================================================================

each with ``abort_early`` True and False (both check every 20 iterations at 200 steps).

* ``bench_cw_time``: median wall time of one call over the batch; ``extra_info`` has the
  per-image wall and CPU time (this process's CPU seconds: steadier than wall time on a shared
  machine), the model calls, the success rate, and the median L2 of the successes with a 95 %
  bootstrap interval over the images.
* ``bench_cw_ratio``: medhpc and foolbox run alternately, ``PAIRS`` times, at the same abort
  setting: the median ratio of their CPU and wall times (with range), and the ratio of their
  mean L2 over the images both break (medhpc / foolbox, 95 % paired bootstrap interval over
  the images). The goal is a time ratio <= 1 with an L2 ratio <= 1.

foolbox returns an all-zero image where it found nothing; such an image can happen to be
misclassified, so it is not counted as a success (as in tests/attacks/test_parity.py).

Run::

    .venv/bin/python -m pytest benchmarks/bench_cw.py --benchmark-only -p no:cacheprovider

Environment: ``MEDHPC_BENCH_THREADS`` (CPU intra-op threads, default 2), ``MEDHPC_BENCH_CW_BATCH``
(B, default 32), ``MEDHPC_BENCH_CW_PAIRS`` (default 3), ``MEDHPC_BENCH_DEVICE`` (default cpu).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medhpc.attacks import cw_l2

THREADS = int(os.environ.get("MEDHPC_BENCH_THREADS", "2"))
BATCH = int(os.environ.get("MEDHPC_BENCH_CW_BATCH", "32"))
PAIRS = int(os.environ.get("MEDHPC_BENCH_CW_PAIRS", "3"))
DEVICE = os.environ.get("MEDHPC_BENCH_DEVICE", "cpu")
SEARCH, STEPS, LR, C0, KAPPA = 5, 200, 5e-3, 1e-2, 0.0
ROUNDS = 3
# foolbox 3.3.4 imports a deprecated scipy namespace: not ours to fix.
FOOLBOX_WARNING = "ignore:Please import `gaussian_filter`:DeprecationWarning"

torch.set_num_threads(THREADS)

pytestmark = [pytest.mark.filterwarnings(FOOLBOX_WARNING)] + (
    [
        pytest.mark.gpu,
        pytest.mark.skipif(
            not torch.cuda.is_available(), reason="MEDHPC_BENCH_DEVICE=cuda but no CUDA device is visible"
        ),
    ]
    if DEVICE == "cuda"
    else []
)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# The model and images (tests/attacks/conftest.py's recipe)


def blob_images(n: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random backgrounds; label 1 adds a bright Gaussian blob at a random place."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    x = 0.1 + 0.6 * x
    centre = 3 + torch.rand(n, 2, generator=g) * (size - 6)
    grid = torch.arange(size, dtype=torch.float32)
    d2 = (grid.view(1, size, 1) - centre[:, 0].view(n, 1, 1)) ** 2 + (
        grid.view(1, 1, size) - centre[:, 1].view(n, 1, 1)
    ) ** 2
    blob = torch.exp(-d2 / (2 * 2.0**2)).unsqueeze(1)
    x = x + 0.35 * blob * y.view(n, 1, 1, 1)
    return x.clamp(0, 1), y


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class CountingModel(nn.Module):
    """Counts forward calls (the same wrapper around the model for every implementation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


_STATE: dict[str, Any] = {}


def setup() -> tuple[CountingModel, torch.Tensor, torch.Tensor]:
    """The trained CNN and the held-out batch (built once per process)."""
    if not _STATE:
        torch.manual_seed(0)
        model = SmallCNN()
        x, y = blob_images(1024, seed=1)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(2)
        for _ in range(300):
            idx = torch.randint(0, len(x), (64,), generator=g)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval().requires_grad_(False)
        xt, yt = blob_images(max(64, BATCH), seed=3)
        counted = CountingModel(model).eval().to(DEVICE)
        _STATE.update(model=counted, x=xt[:BATCH].to(DEVICE), y=yt[:BATCH].to(DEVICE))
        for impl in IMPLS:  # warm-up: allocator, kernels, foolbox's first-call set-up
            run_impl(impl, True, counted, _STATE["x"][:2], _STATE["y"][:2], steps=2)
    return _STATE["model"], _STATE["x"], _STATE["y"]


# ---------------------------------------------------------------------------------------------
# One call of each implementation


@dataclass
class Outcome:
    success: torch.Tensor  # (B,) bool
    l2: torch.Tensor  # (B,) float64
    calls: int


def run_impl(
    impl: str, abort: bool, model: CountingModel, x: torch.Tensor, y: torch.Tensor, steps: int = STEPS
) -> Outcome:
    """One call of ``impl`` at this file's budget, with its success flags and L2 per image."""
    before = model.calls
    if impl in ("medhpc", "medhpc-restart"):
        res = cw_l2(
            model, x, y, steps=steps, search_steps=SEARCH, lr=LR, initial_const=C0, confidence=KAPPA,
            warm_start=impl == "medhpc", abort_early=abort,
        )  # fmt: skip
        success, l2 = res.success, res.l2.double()
    elif impl == "foolbox":
        import foolbox as fb

        attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=SEARCH, steps=steps, stepsize=LR, initial_const=C0, confidence=KAPPA,
            abort_early=abort,
        )  # fmt: skip
        raw, _, _ = attack(fb.PyTorchModel(model, bounds=(0, 1), device=DEVICE), x, y, epsilons=None)
        with torch.no_grad():
            fooled = model.model(raw).argmax(1) != y
        success = fooled & (raw.flatten(1).abs().sum(1) > 0)
        l2 = (raw.double() - x.double()).flatten(1).norm(dim=1)
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    _sync()
    return Outcome(success.cpu(), l2.cpu(), model.calls - before)


IMPLS = ("medhpc", "medhpc-restart", "foolbox")
CASES = [(impl, abort) for impl in IMPLS for abort in (True, False)]


def _bootstrap(values: np.ndarray, stat: Callable[[np.ndarray], float], n: int = 2000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of ``stat`` over ``values`` (fixed seed)."""
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(0)
    draws = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(n)]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def _quality(out: Outcome) -> dict[str, Any]:
    l2 = out.l2[out.success].numpy()
    median = float(np.median(l2)) if len(l2) else float("nan")
    lo, hi = _bootstrap(l2, lambda v: float(np.median(v)))
    return {
        "success_rate": round(float(out.success.double().mean()), 4),
        "median_l2": round(median, 4),
        "median_l2_ci95": [round(lo, 4), round(hi, 4)],
        "mean_l2": round(float(l2.mean()), 4) if len(l2) else float("nan"),
        "model_calls": out.calls,
    }


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl, abort", CASES, ids=[f"{i}-{'abort' if a else 'every-iteration'}" for i, a in CASES])
def bench_cw_time(benchmark: Any, impl: str, abort: bool) -> None:
    model, x, y = setup()
    cpu: list[float] = []
    outcomes: list[Outcome] = []

    def run() -> None:
        t0 = time.process_time()
        outcomes.append(run_impl(impl, abort, model, x, y))
        cpu.append(time.process_time() - t0)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
            "threads": THREADS,
            "impl": impl,
            "abort_early": abort,
            "batch": BATCH,
            "budget": f"{SEARCH}x{STEPS}",
            "per_image_ms": round(median / BATCH * 1e3, 2),
            "cpu_per_image_ms": round(statistics.median(cpu) / BATCH * 1e3, 2),
            "cpu_per_image_ms_range": [round(min(cpu) / BATCH * 1e3, 2), round(max(cpu) / BATCH * 1e3, 2)],
            **_quality(outcomes[-1]),
        }
    )


@pytest.mark.parametrize("impl", ["medhpc", "medhpc-restart"])
@pytest.mark.parametrize("abort", [True, False], ids=["abort", "every-iteration"])
def bench_cw_ratio(benchmark: Any, impl: str, abort: bool) -> None:
    """medhpc / foolbox, run alternately so that the machine's load hits both alike."""
    model, x, y = setup()
    times: dict[str, list[tuple[float, float]]] = {impl: [], "foolbox": []}
    last: dict[str, Outcome] = {}

    def one(which: str) -> None:
        _sync()
        c0, w0 = time.process_time(), time.perf_counter()
        last[which] = run_impl(which, abort, model, x, y)
        times[which].append((time.process_time() - c0, time.perf_counter() - w0))

    def pairs() -> None:
        for _ in range(PAIRS):
            one(impl)
            one("foolbox")

    benchmark.pedantic(pairs, rounds=1, iterations=1, warmup_rounds=0)
    cpu_ratio = [a[0] / b[0] for a, b in zip(times[impl], times["foolbox"], strict=True)]
    wall_ratio = [a[1] / b[1] for a, b in zip(times[impl], times["foolbox"], strict=True)]
    ours, theirs = last[impl], last["foolbox"]
    both = (ours.success & theirs.success).numpy()
    # Mean L2 ratio over the images both break, paired (a ratio per image would be ruled by the
    # images that are already at the boundary, whose L2 is ~1e-7).
    pairs_l2 = np.stack([ours.l2.numpy()[both], theirs.l2.numpy()[both]], axis=1)
    ratio = float(pairs_l2[:, 0].sum() / pairs_l2[:, 1].sum()) if both.any() else float("nan")
    lo, hi = _bootstrap(pairs_l2, lambda v: float(v[:, 0].sum() / v[:, 1].sum()))
    benchmark.extra_info.update(
        {
            "impl": impl,
            "abort_early": abort,
            "batch": BATCH,
            "budget": f"{SEARCH}x{STEPS}",
            "threads": THREADS,
            "pairs": PAIRS,
            "cpu_ratio_median": round(statistics.median(cpu_ratio), 3),
            "cpu_ratio_range": [round(min(cpu_ratio), 3), round(max(cpu_ratio), 3)],
            "wall_ratio_median": round(statistics.median(wall_ratio), 3),
            "wall_ratio_range": [round(min(wall_ratio), 3), round(max(wall_ratio), 3)],
            "calls": [ours.calls, theirs.calls],
            "success_rate": [_quality(ours)["success_rate"], _quality(theirs)["success_rate"]],
            "median_l2": [_quality(ours)["median_l2"], _quality(theirs)["median_l2"]],
            "mean_l2_ratio_both": round(ratio, 4),
            "mean_l2_ratio_ci95": [round(lo, 4), round(hi, 4)],
            "images_both": int(both.sum()),
        }
    )
