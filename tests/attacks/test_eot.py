"""Expectation over Transformation on the stochastic VIB head: averaging the gradient over M
model draws per step reduces its variance; on a deterministic model M > 1 changes nothing;
every draw is named by the attack's seed, so stochastic attacks are reproducible and leave
torch's global RNG alone."""

from __future__ import annotations

import pytest
import torch

from medhpc.attacks import apgd_ce, cw_l2, eot_gradient, fgsm, pgd
from medhpc.attacks.common import ce_ascent
from medhpc.models import is_stochastic


def _spread(vib, x: torch.Tensor, y: torch.Tensor, eot: int, repeats: int = 5) -> float:
    grads = [
        eot_gradient(vib, x, lambda z: ce_ascent(z, y, False), eot=eot, seed=seed, step=0)[0]
        for seed in range(repeats)
    ]
    g = torch.stack(grads)
    return (g - g.mean(0)).square().sum().item() / (repeats - 1)


def test_eot_reduces_gradient_variance_on_the_vib_head(vib, images32: torch.Tensor) -> None:
    assert is_stochastic(vib)
    x, y = images32[:2], torch.tensor([0, 1])
    one, four = _spread(vib, x, y, 1), _spread(vib, x, y, 4)
    assert one > 0, "the VIB gradient did not vary between draws: nothing to average"
    assert four < one / 2, (one, four)  # ~1/4 expected


def test_eot_is_harmless_on_a_deterministic_model(trained) -> None:
    x, y = trained.x[:8], trained.y[:8]
    a = pgd(trained.model, x, y, eps=0.05, step_size=0.02, steps=3, eot=1)
    b = pgd(trained.model, x, y, eps=0.05, step_size=0.02, steps=3, eot=5)
    assert torch.equal(a.x_adv, b.x_adv)


def test_stochastic_attack_reproducible_from_its_seed(vib, images32: torch.Tensor) -> None:
    x = images32[:2]
    state = torch.get_rng_state()
    a = pgd(vib, x, None, eps=0.03, step_size=0.01, steps=2, eot=2, seed=4)
    b = pgd(vib, x, None, eps=0.03, step_size=0.01, steps=2, eot=2, seed=4)
    assert torch.equal(torch.get_rng_state(), state), "the attack drew from torch's global RNG"
    assert torch.equal(a.x_adv, b.x_adv)
    c = pgd(vib, x, None, eps=0.03, step_size=0.01, steps=2, eot=2, seed=5)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize(
    "attack",
    [
        lambda m, x: fgsm(m, x, None, eps=0.03, eot=3),
        lambda m, x: apgd_ce(m, x, None, eps=0.03, steps=2, eot=2),
        lambda m, x: cw_l2(m, x, None, steps=2, search_steps=1, eot=2),
    ],
    ids=["fgsm", "apgd_ce", "cw_l2"],
)
def test_every_gradient_attack_takes_eot(vib, images32: torch.Tensor, attack) -> None:
    res = attack(vib, images32[:2])
    again = attack(vib, images32[:2])
    assert torch.equal(res.x_adv, again.x_adv)
    assert torch.isfinite(res.x_adv).all()
