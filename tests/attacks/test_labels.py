"""Label modes, targeted attacks, seeds and argument errors: what a caller relies on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from medhpc.attacks import AttackResult, apgd_ce, cw_l2, fgsm, pgd, spsa

ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "fgsm": lambda m, x, y, **k: fgsm(m, x, y, eps=0.3, **k),
    "pgd": lambda m, x, y, **k: pgd(m, x, y, eps=0.3, step_size=0.1, steps=5, **k),
    "cw_l2": lambda m, x, y, **k: cw_l2(m, x, y, steps=30, search_steps=4, **k),
    "spsa": lambda m, x, y, **k: spsa(m, x, y, eps=0.3, steps=5, lr=0.1, samples=32, **k),
    "apgd_ce": lambda m, x, y, **k: apgd_ce(m, x, y, eps=0.3, steps=5, **k),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_pred_mode_attacks_the_models_own_predictions(trained, name: str) -> None:
    x = trained.x[:8]
    with torch.no_grad():
        pred = trained.model(x).argmax(1)
    wrong = 1 - pred  # true labels the model gets all wrong: the modes must differ
    by_none = ATTACKS[name](trained.model, x, None)
    by_mode = ATTACKS[name](trained.model, x, wrong, label_mode="pred")
    by_true = ATTACKS[name](trained.model, x, wrong)
    assert torch.equal(by_none.labels, pred) and torch.equal(by_mode.labels, pred)
    assert torch.equal(by_true.labels, wrong)
    # Success is judged against the labels used.
    for res in (by_none, by_mode, by_true):
        assert torch.equal(res.success, res.pred != res.labels)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_targeted_mode_reaches_the_target(trained, name: str) -> None:
    x, y = trained.x[:8], trained.y[:8]
    target = 1 - y
    res = ATTACKS[name](trained.model, x, target, targeted=True)
    assert res.targeted and torch.equal(res.labels, target)
    assert torch.equal(res.success, res.pred == target)
    assert res.success.float().mean() >= 0.75


@pytest.mark.parametrize("name", list(ATTACKS))
def test_targeted_needs_targets(trained, name: str) -> None:
    x, y = trained.x[:2], trained.y[:2]
    with pytest.raises(ValueError, match="target"):
        ATTACKS[name](trained.model, x, None, targeted=True)
    with pytest.raises(ValueError, match="target"):
        ATTACKS[name](trained.model, x, y, targeted=True, label_mode="pred")


@pytest.mark.parametrize("name", ["pgd", "spsa", "apgd_ce"])
def test_reproducible_from_seed_and_generator(trained, name: str) -> None:
    x, y = trained.x[:6], trained.y[:6]
    kw: dict[str, Any] = {"random_init": True}
    a = ATTACKS[name](trained.model, x, y, seed=3, **kw)
    b = ATTACKS[name](trained.model, x, y, seed=3, **kw)
    c = ATTACKS[name](trained.model, x, y, seed=4, **kw)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)
    g1 = torch.Generator().manual_seed(9)
    g2 = torch.Generator().manual_seed(9)
    assert torch.equal(
        ATTACKS[name](trained.model, x, y, generator=g1, **kw).x_adv,
        ATTACKS[name](trained.model, x, y, generator=g2, **kw).x_adv,
    )


def test_pgd_l2_random_start_is_uniform_in_the_ball() -> None:
    """Checked in 2 dimensions, where uniform in the disc means P(r <= t·ε) = t²."""
    model = torch.nn.Linear(2, 2).eval()
    x = torch.full((4000, 2), 0.5)
    # Zero step size: the result is the random start itself.
    res = pgd(model, x, None, eps=0.2, step_size=0.0, steps=1, norm="l2", clip=None, seed=1)
    r = res.l2 / 0.2
    assert (r <= 1 + 1e-5).all()
    assert abs((r <= 0.5).float().mean().item() - 0.25) < 0.03
    assert abs(r.mean().item() - 2 / 3) < 0.02


BAD: list[tuple[str, Callable[..., Any], str]] = [
    ("negative eps", lambda m, x, y: fgsm(m, x, y, eps=-0.1), "eps"),
    ("nan eps", lambda m, x, y: pgd(m, x, y, eps=float("nan"), step_size=0.1, steps=1), "eps"),
    ("zero steps", lambda m, x, y: pgd(m, x, y, eps=0.1, step_size=0.1, steps=0), "steps"),
    ("float steps", lambda m, x, y: apgd_ce(m, x, y, eps=0.1, steps=2.5), "steps"),
    ("unknown norm", lambda m, x, y: pgd(m, x, y, eps=0.1, step_size=0.1, steps=1, norm="l1"), "norm"),
    ("empty clip", lambda m, x, y: fgsm(m, x, y, eps=0.1, clip=(1.0, 0.0)), "clip"),
    ("unbounded CW", lambda m, x, y: cw_l2(m, x, y, steps=1, clip=None), "clip"),
    ("eot 0", lambda m, x, y: fgsm(m, x, y, eps=0.1, eot=0), "eot"),
    ("label mode", lambda m, x, y: fgsm(m, x, y, eps=0.1, label_mode="gold"), "label_mode"),
    ("labels shape", lambda m, x, y: fgsm(m, x, y[:1], eps=0.1), "y must"),
    ("float labels", lambda m, x, y: fgsm(m, x, y.float(), eps=0.1), "y must"),
    ("not a batch", lambda m, x, y: fgsm(m, x[0, 0, 0], None, eps=0.1), "x must"),
    ("negative seed", lambda m, x, y: pgd(m, x, y, eps=0.1, step_size=0.1, steps=1, seed=-1), "seed"),
    ("cw lr", lambda m, x, y: cw_l2(m, x, y, steps=1, lr=0.0), "lr"),
    ("apgd rho", lambda m, x, y: apgd_ce(m, x, y, eps=0.1, rho=2.0), "rho"),
    ("init shape", lambda m, x, y: pgd(m, x, y, eps=0.1, step_size=0.1, steps=1, init=x[:1]), "init"),
]


@pytest.mark.parametrize("fn, match", [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_arguments_raise_naming_the_argument(trained, fn: Callable[..., Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(trained.model, trained.x[:2], trained.y[:2])
