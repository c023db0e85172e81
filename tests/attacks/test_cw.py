"""CW-L2: an image's result is its own (not the batch's), the binary search is per image, and
the defaults (5 x 1000, lr 5e-3, c0 1e-2, κ 0) find small perturbations for every image.
Early abort saves model calls for the same result, keeps results per image, reads the device
once per check, and leaves the attack without it as it was, to the bit."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

from medhpc.attacks import AttackConfig, AttackConfigError, AttackResult, cw_l2, pgd
from medhpc.attacks.common import begin, eot_gradient, finish, margin
from medhpc.attacks.cw import SPEC as CW_SPEC
from medhpc.config import config_hash


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


# ---------------------------------------------------------------------------------------------
# Early abort (issue 15, item 5)


class CountingModel(torch.nn.Module):
    """Counts forward calls and logs them in ``events`` (with the host reads, see below)."""

    def __init__(self, model: torch.nn.Module, events: list[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.events = [] if events is None else events

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.events.append("forward")
        return self.model(x)


def _counted(model: torch.nn.Module, events: list[str] | None = None) -> CountingModel:
    return CountingModel(model, events).eval()


def test_early_abort_calls_the_model_far_less_for_the_same_result(trained) -> None:
    """On the trained CNN most images converge well before 200 iterations per search step:
    with abort on the model is called at most 3/4 as often (measured: 0.61-0.67 of the calls
    on these batches), for the same success rate and a median L2 of successes within 2 %
    (measured: within 0.7 %). Pooled over two batches of 8 images."""
    kw = {"steps": 200, "search_steps": 3}
    calls = {False: 0, True: 0}
    success: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    l2: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    for start in (0, 8):
        x, y = trained.x[start : start + 8], trained.y[start : start + 8]
        per_batch = {}
        for abort in (False, True):
            model = _counted(trained.model)
            res = cw_l2(model, x, y, abort_early=abort, **kw)
            per_batch[abort] = model.calls
            calls[abort] += model.calls
            success[abort].append(res.success)
            l2[abort].append(res.l2[res.success])
        # Every iteration runs without abort: 3 x 200 forwards plus the final evaluation.
        assert per_batch[False] == 3 * 200 + 1
        assert per_batch[True] <= 0.75 * per_batch[False], per_batch
    rate = {a: torch.cat(success[a]).double().mean().item() for a in (False, True)}
    median = {a: torch.cat(l2[a]).median().item() for a in (False, True)}
    assert rate[False] > 0.5
    assert abs(rate[True] - rate[False]) <= 1 / 16, rate
    assert math.isclose(median[True], median[False], rel_tol=0.02), median


def test_early_abort_keeps_an_image_result_independent_of_its_batch(trained) -> None:
    """Each of 8 images attacked alone gives what it gets in the batch of 8 (float64, as the
    test above), although alone the fastest one stops long before the batch does: a frozen
    image does not move while the slow-converging images of its batch go on."""
    model = copy.deepcopy(trained.model).double()
    x, y = trained.x[:8].double(), trained.y[:8]
    kw = {"steps": 100, "search_steps": 3, "abort_early": True, "abort_every": 10}
    counted = _counted(model)
    batch = cw_l2(counted, x, y, **kw)
    assert batch.success.all()
    alone_calls = []
    for i in range(8):
        one = _counted(model)
        alone = cw_l2(one, x[i : i + 1], y[i : i + 1], **kw)
        alone_calls.append(one.calls)
        torch.testing.assert_close(alone.x_adv[0], batch.x_adv[i], rtol=0, atol=1e-9)
        assert alone.success[0] == batch.success[i]
        torch.testing.assert_close(alone.const[0], batch.const[i], equal_nan=True)
    # Not vacuous: the batch ran on long after its fastest image had converged.
    assert min(alone_calls) <= 0.75 * counted.calls, (alone_calls, counted.calls)
    assert counted.calls < 3 * 100 + 1  # and the batch, too, stopped early


SYNCS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy")


@pytest.mark.parametrize("every", [10, 7])
def test_one_host_read_per_check(trained, monkeypatch: pytest.MonkeyPatch, every: int) -> None:
    """Every way a tensor's value reaches Python (``bool()``, ``.item()``, ...) is logged
    between the model's forward calls: the only reads are one per check, right after the
    forward of each iteration ``every``, ``2 every``, ... up to the one where the loop stops
    (here before the 100th: every image has converged). Without abort there is none."""
    events: list[str] = []

    def logged(name: str) -> object:
        original = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            events.append(name)
            return original(self, *args, **kwargs)

        return read

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, logged(name))
    x, y = trained.x[:8], trained.y[:8]
    for abort in (True, False):
        events.clear()
        cw_l2(_counted(trained.model, events), x, y, steps=100, search_steps=1, abort_early=abort, abort_every=every)
        iterations = events.count("forward") - 1  # the last forward is the final evaluation
        expected: list[str] = []
        for it in range(iterations):
            expected.append("forward")
            if abort and it > 0 and it % every == 0:
                expected.append("__bool__")
        expected.append("forward")
        assert events == expected
        if abort:
            assert iterations < 100 and (iterations - 1) % every == 0  # the loop broke at a check
        else:
            assert iterations == 100


def _cw_l2_before_early_abort(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    steps: int,
    search_steps: int,
    lr: float = 5e-3,
    initial_const: float = 1e-2,
    confidence: float = 0.0,
    warm_start: bool = True,
    targeted: bool = False,
    eot: int = 1,
    seed: int = 0,
) -> AttackResult:
    """``cw_l2`` as it was before early abort (commit 41588c1), its loop copied verbatim: the
    executable statement of "the previous behaviour" (argument checks left out)."""
    s = begin(CW_SPEC, model, x, y, clip=(0.0, 1.0), label_mode="true", targeted=targeted, seed=seed,
              generator=None, eot=eot)  # fmt: skip
    x, labels, base, eot, noisy = s.x, s.labels, s.seed, s.eot, s.stochastic
    lo, hi = s.box
    batch = x.shape[0]
    bshape = (batch,) + (1,) * (x.dim() - 1)
    scale = hi - lo
    w0 = torch.atanh(((x - lo) / scale * 2 - 1) * 0.999999)

    def to_image(w: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(w) + 1) / 2 * scale + lo

    def success_of(logits: torch.Tensor) -> torch.Tensor:
        m = margin(logits, labels)
        return (m > confidence) if targeted else (m < -confidence)

    const = torch.full((batch,), initial_const, dtype=x.dtype, device=x.device)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, 1e10)
    best_l2 = torch.full_like(const, math.inf)
    best_adv = x.clone()
    best_const = torch.full_like(const, math.nan)
    beta1, beta2 = 0.9, 0.999

    def hinge(logits: torch.Tensor) -> torch.Tensor:
        m = margin(logits, labels)
        return torch.clamp((-m if targeted else m) + confidence, min=0)

    w = w0.clone()
    for search in range(search_steps):
        if not warm_start:
            w = w0.clone()
        m1 = torch.zeros_like(w)
        m2 = torch.zeros_like(w)
        found = torch.zeros((batch,), dtype=torch.bool, device=x.device)
        c = const

        def weighted_hinge(logits: torch.Tensor, c: torch.Tensor = c) -> torch.Tensor:
            return c * hinge(logits)

        for it in range(steps):
            grad, logits, _ = eot_gradient(
                model, x, weighted_hinge, eot=eot, seed=base, step=search * steps + it, wrt=w,
                transform=to_image, stochastic=noisy,
            )  # fmt: skip
            tanh_w = torch.tanh(w)
            image = (tanh_w + 1) / 2 * scale + lo
            diff = image - x
            grad = grad + diff * scale * (1 - tanh_w.square())
            l2sq = diff.square().flatten(1).sum(1)
            ok = success_of(logits)
            found |= ok
            better = ok & (l2sq < best_l2)
            best_l2 = torch.where(better, l2sq, best_l2)
            best_adv = torch.where(better.view(bshape), image, best_adv)
            best_const = torch.where(better, const, best_const)
            t = it + 1
            m1.mul_(beta1).add_(grad, alpha=1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (m2 / (1 - beta2**t)).sqrt_().add_(1e-8)
            w = w - (lr / (1 - beta1**t)) * m1 / denom

        upper = torch.where(found, torch.minimum(upper, const), upper)
        lower = torch.where(found, lower, torch.maximum(lower, const))
        bounded = upper < 1e10 / 10
        const = torch.where(bounded, (lower + upper) / 2, const * 10)

    return finish(model, x, best_adv, labels, targeted, base, const=best_const)


def _assert_same(got: AttackResult, want: AttackResult) -> None:
    assert torch.equal(got.x_adv, want.x_adv)
    assert torch.equal(got.success, want.success)
    assert torch.equal(got.const.nan_to_num(-1.0), want.const.nan_to_num(-1.0))


@pytest.mark.parametrize(
    "kw",
    [
        {"steps": 30, "search_steps": 4},
        {"steps": 25, "search_steps": 3, "targeted": True, "confidence": 0.5},
        {"steps": 25, "search_steps": 3, "warm_start": False, "initial_const": 0.1},
    ],
    ids=["untargeted", "targeted-kappa", "restart"],
)
def test_without_abort_the_attack_is_unchanged_bit_for_bit(trained, kw: dict[str, Any]) -> None:
    """``abort_early=False`` is the attack as it was, to the bit. So is ``abort_early=True``
    with checks further apart than the search step is long: the freezing machinery
    (``torch.where`` selections that always pick the new value) changes no arithmetic."""
    x, y = trained.x[:8], trained.y[:8]
    if kw.get("targeted"):
        y = 1 - y
    want = _cw_l2_before_early_abort(trained.model, x, y, **kw)
    # Not vacuous: examples were found, and the per-image searches went different ways.
    assert want.success.any() and want.const.nan_to_num(0.0).unique().numel() >= 2
    _assert_same(cw_l2(trained.model, x, y, abort_early=False, **kw), want)
    _assert_same(cw_l2(trained.model, x, y, abort_early=True, abort_every=kw["steps"], **kw), want)


def test_without_abort_eot_on_a_stochastic_model_is_unchanged(vib, images32) -> None:
    """The same on the VIB head with EOT (2 draws per step): the noise schedule is untouched."""
    x, y = images32[:2], torch.tensor([0, 1])
    kw = {"steps": 3, "search_steps": 2, "eot": 2, "initial_const": 10.0}
    want = _cw_l2_before_early_abort(vib, x, y, **kw)
    _assert_same(cw_l2(vib, x, y, abort_early=False, **kw), want)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
def test_bad_abort_every_is_named(trained, value: object) -> None:
    with pytest.raises(ValueError, match="abort_every"):
        cw_l2(trained.model, trained.x[:2], trained.y[:2], steps=2, abort_every=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1, "yes", None])
def test_bad_abort_early_is_named(trained, value: object) -> None:
    with pytest.raises(ValueError, match="abort_early"):
        cw_l2(trained.model, trained.x[:2], trained.y[:2], steps=2, abort_early=value)  # type: ignore[arg-type]


def test_config_fills_the_check_interval() -> None:
    """A config that leaves them out runs with abort on, checking every tenth of the steps
    (rounded up, as foolbox) but not more often than every 20, and says so in its hash; a bad
    interval names its key."""
    cfg = AttackConfig("cw_l2", steps=245)
    assert (cfg.abort_early, cfg.abort_every) == (True, 25)
    assert cfg.kwargs()["abort_every"] == 25
    assert AttackConfig("cw_l2").abort_every == 100
    assert AttackConfig("cw_l2", steps=50).abort_every == 20
    assert config_hash(cfg) != config_hash(AttackConfig("cw_l2", steps=245, abort_every=9))
    assert config_hash(cfg) != config_hash(AttackConfig("cw_l2", steps=245, abort_early=False))
    with pytest.raises(AttackConfigError, match="abort_every"):
        AttackConfig("cw_l2", abort_every=0)
