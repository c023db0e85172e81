"""CW-L2: an image's result is its own (not the batch's), the binary search is per image, and
the defaults (5 x 1000, lr 5e-3, c0 1e-2, κ 0) find small perturbations for every image."""

from __future__ import annotations

import copy
import math

import torch

from medhpc.attacks import cw_l2, pgd


def test_image_result_does_not_depend_on_the_batch(trained) -> None:
    """In float64, so that what is compared is the algorithm (per-image constants, elementwise
    Adam), not float32 rounding, which differs between a convolution over 1 and over 8 images
    and which 240 Adam steps amplify to ~1e-4 on the odd pixel."""
    model = copy.deepcopy(trained.model).double()
    x, y = trained.x.double(), trained.y
    kw = {"steps": 60, "search_steps": 4}
    batch = cw_l2(model, x[:8], y[:8], **kw)
    others = cw_l2(model, torch.cat([x[5:6], x[20:31]]), torch.cat([y[5:6], y[20:31]]), **kw)
    assert batch.success.any()
    for i in (0, 5):
        alone = cw_l2(model, x[i : i + 1], y[i : i + 1], **kw)
        torch.testing.assert_close(alone.x_adv[0], batch.x_adv[i], rtol=0, atol=1e-9)
        assert alone.success[0] == batch.success[i]
        torch.testing.assert_close(alone.const[0], batch.const[i], equal_nan=True)
    torch.testing.assert_close(others.x_adv[0], batch.x_adv[5], rtol=0, atol=1e-9)
    torch.testing.assert_close(others.const[0], batch.const[5], equal_nan=True)


def test_constants_are_searched_per_image(trained) -> None:
    """Images near the boundary succeed at the first constant and bisect downwards; robust
    ones need c raised by 10x steps. One batch-wide constant (CleverHans 4's torch code
    effectively uses the batch mean) could not give both."""
    x, y = trained.x[:16], trained.y[:16]
    res = cw_l2(trained.model, x, y, steps=60, search_steps=5)
    c = res.const[res.success]
    assert res.success.all()
    assert c.unique().numel() >= 2, c
    # Every kept constant is one the schedule can produce from c0 = 1e-2 in 5 steps.
    assert (c >= 1e-2 / 2**4 - 1e-9).all() and (c <= 1e-2 * 10**4 + 1e-6).all()


def test_failed_images_are_flagged_and_returned_unchanged(trained) -> None:
    """With too little budget to succeed, CW returns the clean image, success False, c NaN."""
    x, y = trained.x[:8], trained.y[:8]
    res = cw_l2(trained.model, x, y, steps=2, search_steps=1, initial_const=1e-4, warm_start=False)
    failed = ~res.success
    assert failed.any()
    assert torch.equal(res.x_adv[failed], x[failed])
    assert torch.isnan(res.const[failed]).all()
    assert (res.l2[failed] == 0).all()


def test_best_example_is_kept_across_search_steps(trained) -> None:
    """More search steps never return a larger perturbation for an image that already
    succeeded with fewer (the best successful example is kept)."""
    x, y = trained.x[:8], trained.y[:8]
    short = cw_l2(trained.model, x, y, steps=40, search_steps=2)
    long = cw_l2(trained.model, x, y, steps=40, search_steps=4)
    assert (long.success >= short.success).all()
    both = short.success & long.success
    assert (long.l2[both] <= short.l2[both] + 1e-6).all()


def test_confidence_demands_a_margin(trained) -> None:
    x, y = trained.x[:8], trained.y[:8]
    kappa = 2.0
    res = cw_l2(trained.model, x, y, steps=80, search_steps=5, confidence=kappa)
    with torch.no_grad():
        logits = trained.model(res.x_adv[res.success])
    own = logits.gather(1, y[res.success, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y[res.success], 2).bool(), -math.inf).amax(1)
    assert res.success.any()
    assert (other - own >= kappa - 1e-3).all()


def test_defaults_find_small_perturbations_for_every_image(trained) -> None:
    """CleverHans' defaults (5 x 1000 iterations) on two tiny images (~5 s here): every image
    succeeds with an L2 smaller than that of an L∞ PGD example at the smallest successful ε."""
    x, y = trained.x[:2], trained.y[:2]
    res = cw_l2(trained.model, x, y)
    assert res.success.all()
    for eps in (0.02, 0.05, 0.1, 0.2):
        p = pgd(trained.model, x, y, eps=eps, step_size=eps / 4, steps=10)
        if p.success.all():
            break
    assert p.success.all()
    assert (res.l2 < p.l2).all(), (res.l2, p.l2)
