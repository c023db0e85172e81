"""What a robustness table relies on: every attack stays in its ε-ball and the pixel range, and
on a trained model stronger budgets are stronger (accuracy falls with ε to about 0, PGD beats
FGSM), including APGD on a 2-class model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from medhpc.attacks import AttackResult, apgd, apgd_ce, cw_l2, fab, fgsm, pgd, spsa, square

SLACK = 1e-6  # float32 rounding of (x + δ) - x

BOUNDED: dict[str, tuple[Callable[..., AttackResult], dict[str, Any]]] = {
    "fgsm": (fgsm, {}),
    "pgd": (pgd, {"steps": 5, "step_size_frac": 0.4}),
    "spsa": (spsa, {"steps": 3, "samples": 32, "random_init": True, "lr_frac": 0.5}),
    "apgd_ce": (apgd_ce, {"steps": 8}),
    "apgd_margin": (apgd, {"steps": 8, "loss": "margin"}),
    "fab": (fab, {"steps": 8, "restarts": 2}),
    "square": (square, {"queries": 60}),
}


def _kwargs(name: str, eps: float, norm: str) -> dict[str, Any]:
    kw = dict(BOUNDED[name][1])
    if "step_size_frac" in kw:
        kw["step_size"] = eps * kw.pop("step_size_frac")
    if "lr_frac" in kw:
        kw["lr"] = eps * kw.pop("lr_frac")
    return {"eps": eps, "norm": norm, **kw}


@pytest.mark.parametrize("name", list(BOUNDED))
@pytest.mark.parametrize("norm, eps", [("linf", 0.08), ("l2", 1.5)])
@pytest.mark.parametrize("clip", [(0.0, 1.0), (0.2, 0.8)])
def test_stays_in_eps_ball_and_clip_range(
    trained, name: str, norm: str, eps: float, clip: tuple[float, float]
) -> None:
    fn = BOUNDED[name][0]
    x = trained.x[:12].clamp(*clip)  # images in the range, many pixels on its bounds
    res = fn(trained.model, x, trained.y[:12], clip=clip, **_kwargs(name, eps, norm))
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.x_adv.min() >= clip[0] and res.x_adv.max() <= clip[1]
    d = (res.x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + SLACK * (1 if norm == "linf" else d.shape[1] ** 0.5)).all(), size.max()
    assert (size > 0).any(), "the attack moved nothing: the bound was not exercised"
    torch.testing.assert_close(res.l2, d.norm(dim=1))
    torch.testing.assert_close(res.linf, d.abs().amax(1))


def test_unclipped_mode_may_leave_the_pixel_range(trained) -> None:
    """``clip=None`` reproduces the original scripts (no clipping): then only the ball binds."""
    x = trained.x[:8]
    res = pgd(trained.model, x, trained.y[:8], eps=0.3, step_size=0.1, steps=3, clip=None)
    assert (res.x_adv - x).abs().max() <= 0.3 + SLACK
    assert res.x_adv.min() < 0 or res.x_adv.max() > 1


def test_cw_stays_in_clip_range(trained) -> None:
    x = trained.x[:8].clamp(0.2, 0.8)
    res = cw_l2(trained.model, x, trained.y[:8], steps=30, search_steps=3, clip=(0.2, 0.8))
    assert res.x_adv.min() >= 0.2 and res.x_adv.max() <= 0.8
    assert res.success.any()


def _accuracy(res: AttackResult, y: torch.Tensor) -> float:
    return (res.pred == y).float().mean().item()


EPS_GRID = (0.0, 0.02, 0.05, 0.1, 0.3)  # 0: the clean accuracy
ITERATIVE: dict[str, Callable[[Any, torch.Tensor, torch.Tensor, float], AttackResult]] = {
    "pgd": lambda m, x, y, e: pgd(m, x, y, eps=e, step_size=e / 4, steps=10),
    "apgd_ce": lambda m, x, y, e: apgd_ce(m, x, y, eps=e, steps=10),
    # Enough steps and a step scaled to ε for SPSA to use the budget (the paper's 5 x 0.01
    # can move a pixel by 0.05 at most, whatever ε).
    "spsa": lambda m, x, y, e: spsa(m, x, y, eps=e, steps=8, lr=e / 4, samples=64),
}


@pytest.mark.parametrize("name", list(ITERATIVE))
def test_accuracy_falls_with_eps_to_about_zero(trained, name: str) -> None:
    assert trained.clean_accuracy >= 0.95, "the fixture model did not train"
    x, y = trained.x[:32], trained.y[:32]
    with torch.no_grad():
        clean = (trained.model(x).argmax(1) == y).float().mean().item()
    accs = [clean] + [_accuracy(ITERATIVE[name](trained.model, x, y, eps), y) for eps in EPS_GRID[1:]]
    for small, large in zip(accs, accs[1:], strict=False):
        assert large <= small + 1 / 32, accs  # at most one image of sampling noise
    assert accs[1] < accs[0] or accs[2] < accs[0], accs
    assert accs[-1] <= 0.05, accs


def test_cw_brings_accuracy_to_about_zero(trained) -> None:
    x, y = trained.x[:16], trained.y[:16]
    res = cw_l2(trained.model, x, y, steps=60, search_steps=5)
    assert _accuracy(res, y) <= 0.05
    assert res.success.float().mean() >= 0.95


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_pgd_with_more_steps_at_least_as_strong_as_fgsm(trained, eps: float) -> None:
    x, y = trained.x, trained.y
    one = fgsm(trained.model, x, y, eps=eps)
    many = pgd(trained.model, x, y, eps=eps, step_size=eps / 4, steps=10)
    assert many.success.sum() >= one.success.sum()
    # PGD's higher loss is the mechanism: it ends at least as high as FGSM for most images.
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy
        loss_one = ce(trained.model(one.x_adv), y, reduction="none")
        loss_many = ce(trained.model(many.x_adv), y, reduction="none")
    assert (loss_many >= loss_one - 1e-4).float().mean() >= 0.8


@pytest.mark.parametrize("norm, eps", [("linf", 0.02), ("l2", 0.5)])
@pytest.mark.parametrize("batch", [1, 3])
def test_apgd_runs_on_a_two_class_classifier(
    resnet, images32: torch.Tensor, norm: str, eps: float, batch: int
) -> None:
    """Real ResNet50 with a 2-class head, batches of one and of several (where the popular
    implementations crash: the DLR loss needs 3 classes, index bookkeeping breaks at B = 1)."""
    x = images32[:batch]
    res = apgd_ce(resnet, x, None, eps=eps, norm=norm, steps=5)
    assert res.x_adv.shape == x.shape and torch.isfinite(res.x_adv).all()
    size = res.linf if norm == "linf" else res.l2
    assert (size <= eps + 1e-5).all()
    assert res.success.shape == (batch,)


def test_apgd_breaks_the_trained_two_class_model(trained) -> None:
    x, y = trained.x[:32], trained.y[:32]
    res = apgd_ce(trained.model, x, y, eps=0.1, steps=20, restarts=2)
    assert _accuracy(res, y) <= 0.05
    # Failed images keep their highest-loss iterate, successful ones a misclassified one.
    with torch.no_grad():
        wrong = trained.model(res.x_adv).argmax(1) != y
    assert torch.equal(wrong, res.success)
