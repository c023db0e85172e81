"""Cost of adversarial training: one training step of each method against a plain step.

Run with::

    .venv/bin/python -m pytest benchmarks/bench_adversarial_train.py --benchmark-only -p no:cacheprovider

The benchmark times the training step :func:`medhpc.train.loop.train` takes on one resident
batch (no loader: bench_train.py shows the model is the bottleneck), for ResNet50 with the
linear head: ``plain`` (cross-entropy), ``pgd`` (PGD-AT, 10 steps), ``trades`` (TRADES, 10
steps, β = 6) and ``fgsm`` (fast FGSM-AT), all at ε = 8/255, interleaved round by round (the
fastest round of each counts). ``extra_info`` gives each method's step time, images/s and
``relative_to_plain``, its step time over the plain step's: what an epoch's training part
costs, since every batch takes the same step (the robust validation adds val_steps + 1
passes over the 5 % validation split). The
references' rule of thumb is steps + 1 plain steps for PGD-AT (forward and backward per
inner step, and the step itself), steps + 2 for TRADES (two forwards in the step), 2 for fast
AT; the attacks' final check of the examples adds one forward each.

On the CPU the sizes are cut down (64 px, batch 8); on CUDA 224 px, batch 128, bf16 autocast
and channels_last, as training runs there. Environment: ``MEDHPC_BENCH_BATCH``,
``MEDHPC_BENCH_SIZE``, ``MEDHPC_BENCH_ROUNDS``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from medhpc.models import ModelConfig, build_model
from medhpc.train.adversarial import METHODS, AdversarialConfig

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
BATCH = int(os.environ.get("MEDHPC_BENCH_BATCH", 128 if CUDA else 8))
SIZE = int(os.environ.get("MEDHPC_BENCH_SIZE", 224 if CUDA else 64))
EPS = 8 / 255
CONFIGS: dict[str, AdversarialConfig | None] = {
    "plain": None,
    "pgd": AdversarialConfig("pgd", EPS, steps=10),
    "trades": AdversarialConfig("trades", EPS, steps=10),
    "fgsm": AdversarialConfig("fgsm", EPS),
}
ROUNDS = int(os.environ.get("MEDHPC_BENCH_ROUNDS", 5 if CUDA else 3))


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def test_adversarial_training_step(benchmark: Any) -> None:
    """One round steps every method once, in turn, so that a shared machine's load falls on
    all of them alike; each method's time is its fastest round."""
    assert set(CONFIGS) - {"plain"} == set(METHODS)
    torch.manual_seed(0)
    fmt = torch.channels_last if CUDA else torch.contiguous_format
    model = build_model(ModelConfig(arch="resnet50")).to(DEVICE, memory_format=fmt).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    amp = torch.bfloat16 if CUDA else None
    if CUDA:
        torch.backends.cudnn.benchmark = True
    x = torch.rand(BATCH, 3, SIZE, SIZE, device=DEVICE).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (BATCH,), device=DEVICE)
    counter = iter(range(1 << 30))
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}

    def plain(out: Any, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.logits.float(), labels)

    def step(cfg: AdversarialConfig | None) -> None:
        with torch.autocast(DEVICE.type, dtype=amp or torch.float32, enabled=amp is not None):
            if cfg is None:
                loss = plain(model.forward_train(x), y)
            else:
                loss = cfg.spec.loss(model, x, y, cfg, next(counter), plain)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync()

    def one_round() -> None:
        for name, cfg in CONFIGS.items():
            started = time.perf_counter()
            step(cfg)
            times[name].append(time.perf_counter() - started)

    for cfg in CONFIGS.values():  # warm-up (cudnn autotuning, allocator)
        step(cfg)
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    best = {name: min(t) for name, t in times.items()}
    benchmark.extra_info.update(
        {
            "device": torch.cuda.get_device_name() if CUDA else f"cpu ({torch.get_num_threads()} threads)",
            "size": SIZE, "batch": BATCH, "precision": "bf16" if amp else "fp32", "eps": round(EPS, 5),
            "rounds": ROUNDS,
            "step_s": {k: round(v, 4) for k, v in best.items()},
            "images_per_s": {k: round(BATCH / v, 1) for k, v in best.items()},
            "relative_to_plain": {k: round(v / best["plain"], 2) for k, v in best.items()},
        }
    )  # fmt: skip
