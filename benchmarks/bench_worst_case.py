"""The worst-case ensemble's cost against running every member on every image.

The model is a small CNN trained for a few seconds on the blob images of the attack tests
(``tests/attacks/conftest.py``: positives carry a bright blob), so that at ε = 0.03 most images
stay robust to every member and the later members have work left, and at ε = 0.08 most break. Both runs use the same
members and inputs in one process:

* ``ensemble``: ``worst_case`` (each member only on the images still robust);
* ``every member``: each member on every image, the per-image worst case taken afterwards.

``extra_info`` holds the robust accuracy of both (they must agree to within the members' own
randomness, since members see different sub-batches) and the images each member was run on.

Run::

    .venv/bin/python -m pytest benchmarks/bench_worst_case.py --benchmark-only -p no:cacheprovider

Environment: ``MEDHPC_BENCH_THREADS`` (CPU intra-op threads, default 2), ``MEDHPC_BENCH_DEVICE``
(default cpu), ``MEDHPC_BENCH_WORST_N`` (images, default 128).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

from medhpc.attacks import AttackConfig, run_attack

THREADS = int(os.environ.get("MEDHPC_BENCH_THREADS", "2"))
DEVICE = os.environ.get("MEDHPC_BENCH_DEVICE", "cpu")
N = int(os.environ.get("MEDHPC_BENCH_WORST_N", "128"))
EPSILONS = (0.03, 0.08)


def members(eps: float) -> tuple[AttackConfig, ...]:
    """The default members' kinds and order at a benchmark's budget."""
    return (
        AttackConfig("apgd", eps=eps, loss="ce", steps=20),
        AttackConfig("apgd", eps=eps, loss="margin", steps=20),
        AttackConfig("fab", eps=eps, steps=20),
        AttackConfig("square", eps=eps, queries=500),
    )

torch.set_num_threads(THREADS)
pytestmark = (
    [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="MEDHPC_BENCH_DEVICE=cuda but no GPU")]
    if DEVICE == "cuda"
    else []
)


def _blobs(n: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The attack tests' blob images (see tests/attacks/conftest.py), rebuilt here."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = 0.1 + 0.6 * nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    centre = 3 + torch.rand(n, 2, generator=g) * (size - 6)
    grid = torch.arange(size, dtype=torch.float32)
    rows = (grid.view(1, size, 1) - centre[:, 0].view(n, 1, 1)) ** 2
    d2 = rows + (grid.view(1, 1, size) - centre[:, 1].view(n, 1, 1)) ** 2
    x = x + 0.35 * torch.exp(-d2 / 8.0).unsqueeze(1) * y.view(n, 1, 1, 1)
    return x.clamp(0, 1), y


_STATE: dict[str, Any] = {}


def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    if not _STATE:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, 2),
        )  # fmt: skip
        x, y = _blobs(1024, 1)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(2)
        for _ in range(300):
            idx = torch.randint(0, len(x), (64,), generator=g)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval().requires_grad_(False).to(DEVICE)
        xt, yt = _blobs(N, 3)
        _STATE.update(model=model, x=xt.to(DEVICE), y=yt.to(DEVICE))
    return _STATE["model"], _STATE["x"], _STATE["y"]


def _ensemble(eps: float) -> dict[str, Any]:
    model, x, y = setup()
    res = run_attack(model, x, y, AttackConfig("worst_case", eps=eps, members=members(eps)))
    return {"accuracy": float((res.pred == y).float().mean()), "broken_by": res.broken_by.tolist()}


def _every_member(eps: float) -> dict[str, Any]:
    model, x, y = setup()
    broken = torch.zeros_like(y, dtype=torch.bool)
    for k, m in enumerate(members(eps)):
        broken |= run_attack(model, x, y, m, seed=k).success
    return {"accuracy": float(1 - broken.float().mean())}


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("way", ["ensemble", "every member"])
def bench_worst_case_cost(benchmark: Any, way: str, eps: float) -> None:
    setup()
    fn = _ensemble if way == "ensemble" else _every_member
    out = benchmark.pedantic(fn, args=(eps,), rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(images=N, eps=eps, device=DEVICE, robust_accuracy=out["accuracy"])
    if way == "ensemble":
        chosen = members(eps)
        counts = torch.bincount(torch.tensor(out["broken_by"]) + 1, minlength=len(chosen) + 1).tolist()
        per_member = {f"{k}:{m.name}": c for k, (m, c) in enumerate(zip(chosen, counts[1:], strict=True))}
        benchmark.extra_info.update(broken_by={"none": counts[0], **per_member})
