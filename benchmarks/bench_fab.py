"""FAB: per-image time and model queries of medhpc's FAB against torchattacks 3.5.1's, L∞ and L2.

One process, one model, one batch (as :mod:`bench_attacks`): a ResNet50 classifier
(:mod:`medhpc.models`, linear head, untrained, eval mode, 2 classes) on ``B`` random
3x``SIZE``² images labelled with its own predictions (torchattacks attacks only correctly
classified images; this way both attack every image). Equal budgets: ``STEPS`` iterations,
1 restart (no random start in either), untargeted, ε large enough that it filters nothing.

* ``bench_fab_time``: wall time of one call over the batch (2 rounds, no warm-up beyond the
  set-up's forward: a torchattacks call takes most of a minute on the shared CPU VM);
  ``extra_info`` has the per-image median and minimum, and, counted through
  :class:`CountingModel` on the timed calls, the model's forward calls, the backward passes
  through its output (each ``autograd.grad`` / ``backward`` that reaches the logits) and the
  images those forwards carried, per call; also how many images each found an adversarial
  example for and their median norm (the two should agree: medhpc follows the same trajectory).

Per iteration medhpc does 1 forward with gradients, C - 1 backward passes (one per other class)
and 1 forward to check the new iterate; torchattacks does 1 forward, C backward passes (one per
class, the true class's discarded) and 1 forward. medhpc adds 1 forward per call for
``AttackResult``'s evaluation; torchattacks 1 forward for its initial check of which images are
correctly classified and 1 more after its run.

Run::

    .venv/bin/python -m pytest benchmarks/bench_fab.py --benchmark-only -p no:cacheprovider

Environment: ``MEDHPC_BENCH_THREADS`` (CPU intra-op threads, default 2),
``MEDHPC_BENCH_ATTACK_BATCH`` (B, default 8), ``MEDHPC_BENCH_ATTACK_SIZE`` (image side, default
32), ``MEDHPC_BENCH_FAB_STEPS`` (default 10, AutoAttack's class default; its evaluation runs 100),
``MEDHPC_BENCH_DEVICE`` (default cpu).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import torch
from torch import nn

from medhpc.attacks import fab
from medhpc.models import ModelConfig, build_model

THREADS = int(os.environ.get("MEDHPC_BENCH_THREADS", "2"))
BATCH = int(os.environ.get("MEDHPC_BENCH_ATTACK_BATCH", "8"))
SIZE = int(os.environ.get("MEDHPC_BENCH_ATTACK_SIZE", "32"))
STEPS = int(os.environ.get("MEDHPC_BENCH_FAB_STEPS", "10"))
DEVICE = os.environ.get("MEDHPC_BENCH_DEVICE", "cpu")
EPS = {"linf": 1.0, "l2": 1e3}  # the whole box: every example found counts
TA_NORM = {"linf": "Linf", "l2": "L2"}

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
    """Wraps a model; counts its forward calls, the images they carried, and the backward
    passes that reach its output (a hook on the logits fires once per pass)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0
        self.images = 0

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backwards += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        self.forwards += 1
        self.images += x.shape[0]
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out


_STATE: dict[str, Any] = {}


def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The one model and batch every benchmark uses (built once per process)."""
    if not _STATE:
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch="resnet50")).eval().to(DEVICE)
        g = torch.Generator().manual_seed(1)
        x = torch.rand(BATCH, 3, SIZE, SIZE, generator=g).to(DEVICE)
        with torch.no_grad():
            y = model(x).argmax(1)
        _STATE.update(model=model, x=x, y=y)
    return _STATE["model"], _STATE["x"], _STATE["y"]


def run_impl(impl: str, norm: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One call at this file's budget; returns the adversarial batch."""
    if impl == "medhpc":
        return fab(model, x, y, eps=EPS[norm], norm=norm, steps=STEPS, restarts=1).x_adv
    import torchattacks  # type: ignore[import-untyped]

    atk = torchattacks.FAB(model, norm=TA_NORM[norm], eps=EPS[norm], steps=STEPS, n_restarts=1, n_classes=2)
    adv: torch.Tensor = atk(x, y)
    return adv


# "torchattacks-frozen": the same call on a copy of the model whose weights do not require
# gradients. torchattacks differentiates with ``logits.backward(...)``, which also computes
# every weight's gradient; medhpc uses ``autograd.grad`` to the input only (the frozen copy
# changes nothing for it). The row separates that cost from the algorithm's.
IMPLS = ("medhpc", "torchattacks", "torchattacks-frozen")
CASES = [(impl, norm) for norm in ("linf", "l2") for impl in IMPLS]
ROUNDS = 2


@pytest.mark.parametrize("impl, norm", CASES, ids=[f"{n}-{i}" for i, n in CASES])
def bench_fab_time(benchmark: Any, impl: str, norm: str) -> None:
    model, x, y = setup()
    if impl == "torchattacks-frozen":
        model = copy.deepcopy(model).requires_grad_(False)
    # Counted on every timed round (a hook and three counters: no measurable overhead).
    counted = CountingModel(model).eval()
    out: list[torch.Tensor] = []

    def run() -> None:
        out.append(run_impl(impl.removesuffix("-frozen"), norm, counted, x, y))
        _sync()

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    adv = out[-1]
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    stats = benchmark.stats.stats
    benchmark.extra_info.update(
        {
            "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
            "impl": impl,
            "norm": norm,
            "steps": STEPS,
            "batch": BATCH,
            "image": f"3x{SIZE}x{SIZE}",
            "per_image_ms_median": round(stats.median / BATCH * 1e3, 3),
            "per_image_ms_min": round(stats.min / BATCH * 1e3, 3),
            "forwards_per_call": counted.forwards // ROUNDS,
            "backwards_per_call": counted.backwards // ROUNDS,
            "forward_images_per_call": counted.images // ROUNDS,
            "fooled": int(fooled.sum()),
            "median_norm_fooled": float(size[fooled].median()) if fooled.any() else float("nan"),
        }
    )
