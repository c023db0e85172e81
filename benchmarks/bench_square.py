"""Square Attack: per-image time and model queries of medhpc's ``square`` against torchattacks
3.5.1's ``Square`` and ART 1.20.1's ``SquareAttack`` at an equal query budget, and of medhpc's
``spsa`` at that same budget.

One process, one model and batch for all three: a ResNet50 classifier (:mod:`medhpc.models`,
linear head, untrained, eval mode) on ``B`` random 3x``SIZE``² images labelled with the model's
own predictions, L∞ ε 0.02. The budget is SPSA's: ``SPSA_STEPS`` Adam steps of ``SPSA_SAMPLES``
± pairs charge ``1 + steps · (2 · samples + 1)`` queries per image (326 by default); Square gets
that many (torchattacks: ``n_queries`` = budget − 2 proposals, the same evaluations of a
robust image, see :mod:`medhpc.attacks.square`; ART: ``max_iter`` = budget − 2 iterations, its
``PyTorchClassifier`` over the same wrapped model, probabilities from the logits).

Each case runs once (``rounds=1``) on a model wrapper that counts the images it is called on.
``extra_info``: ``per_image_ms``; ``charged_mean`` / ``charged_max``, the queries medhpc
charges per image (``AttackResult.queries``); ``forwarded_per_image``, the images the model
actually evaluated divided by ``B`` (medhpc keeps evaluating broken images, batched, to stay
free of host synchronisation; torchattacks drops them from the batch); ``success_rate``.

Run::

    .venv/bin/python -m pytest benchmarks/bench_square.py --benchmark-only -p no:cacheprovider

Environment: ``MEDHPC_BENCH_THREADS`` (default 2), ``MEDHPC_BENCH_SQUARE_BATCH`` (B, default
8), ``MEDHPC_BENCH_SQUARE_SIZE`` (image side, default 32), ``MEDHPC_BENCH_SQUARE_SAMPLES``
(SPSA pairs per step, default 32), ``MEDHPC_BENCH_DEVICE`` (default cpu).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

from medhpc.attacks import spsa, square
from medhpc.models import ModelConfig, build_model

THREADS = int(os.environ.get("MEDHPC_BENCH_THREADS", "2"))
BATCH = int(os.environ.get("MEDHPC_BENCH_SQUARE_BATCH", "8"))
SIZE = int(os.environ.get("MEDHPC_BENCH_SQUARE_SIZE", "32"))
DEVICE = os.environ.get("MEDHPC_BENCH_DEVICE", "cpu")
EPS = 0.02
SPSA_STEPS = 5
SPSA_SAMPLES = int(os.environ.get("MEDHPC_BENCH_SQUARE_SAMPLES", "32"))
BUDGET = 1 + SPSA_STEPS * (2 * SPSA_SAMPLES + 1)

torch.set_num_threads(THREADS)

pytestmark = (
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


class CountingModel(nn.Module):
    """Wraps a model and counts the images it evaluates (no synchronisation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.model(x)


_STATE: dict[str, Any] = {}


def setup() -> tuple[CountingModel, torch.Tensor, torch.Tensor]:
    """The one model and batch every case uses (built once per process)."""
    if not _STATE:
        torch.manual_seed(0)
        model = CountingModel(build_model(ModelConfig(arch="resnet50")).eval().to(DEVICE)).eval()
        g = torch.Generator().manual_seed(1)
        x = torch.rand(BATCH, 3, SIZE, SIZE, generator=g).to(DEVICE)
        with torch.no_grad():
            y = model(x).argmax(1)  # every image starts correctly classified
        _STATE.update(model=model, x=x, y=y)
    return _STATE["model"], _STATE["x"], _STATE["y"]


def run_case(case: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """One call at the shared budget: (adversarial batch, medhpc's charged queries or None)."""
    if case == "square-medhpc":
        res = square(model, x, y, eps=EPS, queries=BUDGET, seed=0)
        return res.x_adv, res.queries
    if case == "spsa-medhpc":
        res = spsa(model, x, y, eps=EPS, steps=SPSA_STEPS, samples=SPSA_SAMPLES, seed=0)
        return res.x_adv, res.queries
    if case == "square-torchattacks":
        import torchattacks

        return torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=BUDGET - 2, seed=0)(x, y), None
    if case == "square-art":
        import numpy as np
        from art.attacks.evasion import SquareAttack
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(
            model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=2,
            clip_values=(0.0, 1.0), device_type="gpu" if DEVICE == "cuda" else "cpu",
        )  # fmt: skip
        attack = SquareAttack(classifier, norm=np.inf, eps=EPS, max_iter=BUDGET - 2, p_init=0.8, nb_restarts=1,
                              batch_size=x.shape[0], verbose=False)  # fmt: skip
        adv = attack.generate(x.cpu().numpy(), y=y.cpu().numpy())
        return torch.from_numpy(adv).to(x.device), None
    raise ValueError(f"unknown case {case!r}")


CASES = ["square-medhpc", "square-torchattacks", "square-art", "spsa-medhpc"]


@pytest.mark.parametrize("case", CASES)
def bench_square_time(benchmark: Any, case: str) -> None:
    model, x, y = setup()
    out: dict[str, Any] = {}

    def run() -> None:
        model.images = 0
        out["adv"], out["charged"] = run_case(case, model, x, y)
        _sync()
        out["forwarded"] = model.images

    try:
        benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    except ImportError as exc:  # a reference that is not installed is reported, not hidden
        pytest.skip(f"{case}: {exc}")
    with torch.no_grad():
        success = float((model.model(out["adv"]).argmax(1) != y).double().mean())
    charged = out["charged"]
    benchmark.extra_info.update(
        {
            "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
            "case": case,
            "batch": BATCH,
            "image": f"3x{SIZE}x{SIZE}",
            "budget": BUDGET,
            "per_image_ms": round(benchmark.stats.stats.median / BATCH * 1e3, 3),
            "charged_mean": None if charged is None else round(float(charged.double().mean()), 1),
            "charged_max": None if charged is None else int(charged.max()),
            "forwarded_per_image": round(out["forwarded"] / BATCH, 1),
            "success_rate": round(success, 3),
        }
    )
