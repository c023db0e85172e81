"""The adaptive attack's per-image cost against the plain PGD it starts as, at equal steps.

One process, one batch: a ResNet50 classifier (:mod:`medhpc.models`, untrained, eval mode, 2
classes) with the linear head (score: predictive entropy) and with the VIB head (12 draws,
score: mutual information, EOT 4 for both attacks), on ``B`` random 3x``SIZE``² images. The
detector is fitted once on another random batch, outside the timing.

* ``pgd``: ``STEPS`` steps of PGD (L∞, ε 0.02, step 0.01);
* ``adaptive-1``: one round of the adaptive attack at the same steps with λ = 1 (the cost of the
  detector's term alone: the score from the draws the prediction already made, its gradient,
  and the one pass that judges the round's last iterate);
* ``adaptive-5``: the default search, 5 rounds (λ = 0 first, so round one is the plain PGD).

``extra_info`` has the per-image time and, counted on the timed calls, the model's forward calls.
``bench_adaptive_ratio_interleaved`` runs the three alternately (``MEDHPC_BENCH_ROUNDS``, default
5) and records the ratios of their medians, the figure that counts on a shared CPU.

Run::

    .venv/bin/python -m pytest benchmarks/bench_adaptive.py --benchmark-only -p no:cacheprovider

Environment: ``MEDHPC_BENCH_THREADS`` (default 2), ``MEDHPC_BENCH_ATTACK_BATCH`` (B, default 8),
``MEDHPC_BENCH_ATTACK_SIZE`` (default 32), ``MEDHPC_BENCH_ADAPTIVE_STEPS`` (default 5, the paper's
PGD row), ``MEDHPC_BENCH_DEVICE`` (default cpu).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

from medhpc.attacks import AttackConfig, calibrate, run_attack
from medhpc.models import ModelConfig, build_model

THREADS = int(os.environ.get("MEDHPC_BENCH_THREADS", "2"))
BATCH = int(os.environ.get("MEDHPC_BENCH_ATTACK_BATCH", "8"))
SIZE = int(os.environ.get("MEDHPC_BENCH_ATTACK_SIZE", "32"))
STEPS = int(os.environ.get("MEDHPC_BENCH_ADAPTIVE_STEPS", "5"))
DEVICE = os.environ.get("MEDHPC_BENCH_DEVICE", "cpu")
ROUNDS = int(os.environ.get("MEDHPC_BENCH_ROUNDS", "5"))
SCORE = {"linear": "predictive_entropy", "vib": "mutual_information"}
EOT = {"linear": 1, "vib": 4}

torch.set_num_threads(THREADS)

pytestmark = (
    [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="MEDHPC_BENCH_DEVICE=cuda but no GPU")]
    if DEVICE == "cuda"
    else []
)


class Counting(nn.Module):
    """Counts forward calls of the wrapped classifier (``forward`` and ``logits_and_draws``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)  # type: ignore[no-any-return]

    def logits_and_draws(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        return self.model.logits_and_draws(x)  # type: ignore[operator,no-any-return]

    def sample_logits(self, x: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        self.calls += 1
        return self.model.sample_logits(x, samples)  # type: ignore[operator,no-any-return]


_STATE: dict[str, Any] = {}


def setup(head: str) -> tuple[Counting, torch.Tensor, torch.Tensor, Any]:
    if head not in _STATE:
        torch.manual_seed(0)
        model = Counting(build_model(ModelConfig(arch="resnet50", head=head)).eval().to(DEVICE))
        g = torch.Generator().manual_seed(1)
        x = torch.rand(BATCH, 3, SIZE, SIZE, generator=g).to(DEVICE)
        y = (torch.arange(BATCH) % 2).to(DEVICE)
        val = torch.rand(4 * BATCH, 3, SIZE, SIZE, generator=g).to(DEVICE)
        det = calibrate(model, [(val, y.repeat(4))], score=SCORE[head])
        _STATE[head] = (model, x, y, det)
    return _STATE[head]  # type: ignore[no-any-return]


def config(way: str, head: str) -> AttackConfig:
    base: dict[str, Any] = {"eps": 0.02, "step_size": 0.01, "steps": STEPS, "eot": EOT[head]}
    if way == "pgd":
        return AttackConfig("pgd", **base)
    rounds = 1 if way == "adaptive-1" else 5
    lam = 1.0 if way == "adaptive-1" else 0.0
    return AttackConfig("adaptive", score=SCORE[head], search_steps=rounds, initial_lambda=lam, **base)


@pytest.mark.parametrize("way", ["pgd", "adaptive-1", "adaptive-5"])
@pytest.mark.parametrize("head", ["linear", "vib"])
def bench_adaptive_cost(benchmark: Any, head: str, way: str) -> None:
    model, x, y, det = setup(head)
    cfg = config(way, head)
    detector = det if cfg.spec.calibrated else None

    def run() -> None:
        run_attack(model, x, y, cfg, detector=detector)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    model.calls = 0
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        images=BATCH, steps=STEPS, eot=EOT[head], score=SCORE[head], device=DEVICE,
        per_image_s=benchmark.stats.stats.median / BATCH, forwards_per_call=model.calls / 4,
    )  # fmt: skip


@pytest.mark.parametrize("head", ["linear", "vib"])
def bench_adaptive_ratio_interleaved(benchmark: Any, head: str) -> None:
    """The three ways run alternately, ``ROUNDS`` times, in one test: on a shared machine the
    ratios of their medians are what counts. The timed body is one round of all three."""
    import statistics
    import time

    model, x, y, det = setup(head)
    ways = ("pgd", "adaptive-1", "adaptive-5")
    times: dict[str, list[float]] = {w: [] for w in ways}

    def round_of_all() -> None:
        for way in ways:
            cfg = config(way, head)
            started = time.perf_counter()
            run_attack(model, x, y, cfg, detector=det if cfg.spec.calibrated else None)
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            times[way].append(time.perf_counter() - started)

    benchmark.pedantic(round_of_all, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    med = {w: statistics.median(t[1:]) for w, t in times.items()}  # the warm-up round left out
    benchmark.extra_info.update(
        images=BATCH, steps=STEPS, eot=EOT[head], device=DEVICE,
        per_image_s={w: m / BATCH for w, m in med.items()},
        ratio_to_pgd={w: m / med["pgd"] for w, m in med.items()},
    )  # fmt: skip
