"""The attacks on CUDA: no host synchronisation anywhere in an attack (CUDA's sync debug mode
turns any into an error), results stay on the device, and the GPU agrees with the CPU.

Run on the GPU machine: ``python -m pytest tests/attacks -m gpu``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from medhpc.attacks import AttackConfig, AttackResult, apgd, apgd_ce, cw_l2, fab, fgsm, pgd, spsa, square
from medhpc.models import ModelConfig, build_model

pytestmark = pytest.mark.gpu

ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, eps=0.03),
    "pgd_linf": lambda m, x, y: pgd(m, x, y, eps=0.03, step_size=0.01, steps=3),
    "pgd_l2": lambda m, x, y: pgd(m, x, y, eps=0.5, step_size=0.2, steps=3, norm="l2"),
    "cw_l2": lambda m, x, y: cw_l2(m, x, y, steps=5, search_steps=2),
    "spsa": lambda m, x, y: spsa(m, x, y, eps=0.03, steps=2, samples=16, max_batch_bytes=2**20),
    "apgd_ce": lambda m, x, y: apgd_ce(m, x, y, eps=0.03, steps=6),
    "pgd_eot": lambda m, x, y: pgd(m, x, y, eps=0.03, step_size=0.01, steps=2, eot=2),
    "apgd_margin": lambda m, x, y: apgd(m, x, y, eps=0.03, steps=6, loss="margin", eot=2),
    "fab_linf": lambda m, x, y: fab(m, x, y, eps=0.03, steps=4, restarts=2),
    "fab_l2": lambda m, x, y: fab(m, x, y, eps=0.5, norm="l2", steps=4, eot=2),
    "square_linf": lambda m, x, y: square(m, x, y, eps=0.03, queries=20),
    "square_l2": lambda m, x, y: square(m, x, y, eps=0.5, norm="l2", queries=20),
}


@contextmanager
def no_host_sync() -> Iterator[None]:
    """Raise on any synchronising CUDA call (``.item()``, ``nonzero``, device-to-host copies)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture(scope="module", params=["linear", "vib"])
def cuda_model(request: pytest.FixtureRequest) -> Any:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="resnet50", head=request.param)).eval().cuda()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_runs_on_cuda_without_host_sync(cuda_model: Any, name: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=g).cuda()
    y = torch.tensor([0, 1, 0, 1], device="cuda")
    with no_host_sync():
        res = ATTACKS[name](cuda_model, x, y)
    for t in (res.x_adv, res.success, res.pred, res.l2, res.linf):
        assert t.device.type == "cuda"
    assert (res.x_adv >= 0).all() and (res.x_adv <= 1).all()


def test_pred_mode_without_host_sync(cuda_model: Any) -> None:
    x = torch.rand(3, 3, 32, 32, device="cuda")
    with no_host_sync():
        res = pgd(cuda_model, x, None, eps=0.03, step_size=0.01, steps=2)
        spsa(cuda_model, x, None, eps=0.03, steps=1, samples=8)
    assert res.labels.device.type == "cuda"


@pytest.mark.usefixtures("no_tf32")
def test_cuda_matches_cpu() -> None:
    """Deterministic attacks from the same start agree across devices to float tolerance
    (a few gradient signs may flip where a component is ~0)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet50")).eval()
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([0, 1, 0, 1])
    start = torch.zeros_like(x).uniform_(-0.03, 0.03)
    cpu = pgd(model, x, y, eps=0.03, step_size=0.01, steps=3, init=start)
    gpu = pgd(model.cuda(), x.cuda(), y.cuda(), eps=0.03, step_size=0.01, steps=3, init=start.cuda())
    close = torch.isclose(gpu.x_adv.cpu(), cpu.x_adv, atol=1e-5)
    assert close.float().mean() > 0.99
    cw_cpu = cw_l2(model.cpu(), x, y, steps=20, search_steps=2)
    cw_gpu = cw_l2(model.cuda(), x.cuda(), y.cuda(), steps=20, search_steps=2)
    both = cw_cpu.success & cw_gpu.success.cpu()
    assert (cw_cpu.success != cw_gpu.success.cpu()).sum() <= 1
    torch.testing.assert_close(cw_gpu.l2.cpu()[both], cw_cpu.l2[both], rtol=1e-2, atol=1e-3)


def test_spsa_uses_the_fused_cuda_kernels() -> None:
    from medhpc import _ext

    assert _ext.has_kernel("spsa_perturb_out", "cuda") and _ext.has_kernel("spsa_reduce", "cuda")


def test_the_worst_case_runs_on_cuda_with_one_host_read_per_member(cuda_model: Any) -> None:
    """The ensemble reads the device between members (which images are still robust), never
    inside a member's loop: under the sync debugger's "warn" mode, at most one warning per
    member after the first."""
    import warnings

    from medhpc.attacks import run_attack

    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=g).cuda()
    y = torch.tensor([0, 1, 0, 1], device="cuda")
    members = (AttackConfig("pgd", eps=0.03, steps=3), AttackConfig("apgd", eps=0.03, steps=4, loss="margin"),
               AttackConfig("square", eps=0.03, queries=10))  # fmt: skip
    cfg = AttackConfig("worst_case", eps=0.03, members=members, eot=2)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = run_attack(cuda_model, x, y, cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert res.broken_by is not None and res.broken_by.device.type == "cuda"
    assert len(syncs) <= 2 * (len(members) - 1), [str(w.message) for w in syncs]


def test_the_adaptive_attack_runs_on_cuda_without_host_sync(cuda_model: Any) -> None:
    """The detector is fitted first (it reads scores on the host); the attack itself, its λ search
    included, reads nothing."""
    from medhpc.attacks import adaptive, calibrate
    from medhpc.models import is_stochastic

    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=g).cuda()
    y = torch.tensor([0, 1, 0, 1], device="cuda")
    score = "mutual_information" if is_stochastic(cuda_model) else "predictive_entropy"
    det = calibrate(cuda_model, [(torch.rand(8, 3, 32, 32, generator=g).cuda(), y.repeat(2))], score=score)
    with no_host_sync():
        res = adaptive(cuda_model, x, y, eps=0.03, steps=2, search_steps=2, eot=2, score=score, detector=det)
    assert res.x_adv.device.type == "cuda" and res.const is not None
