"""The per-image worst-case ensemble: never weaker than a member, members only on robust images,
the breaking member recorded, EOT and re-checks for stochastic heads, and its config."""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import pytest
import torch
from torch import nn

from medhpc.attacks import AttackConfig, evaluate_robustness, run_attack
from medhpc.attacks.config import AttackConfigError
from medhpc.attacks.registry import ATTACKS
from medhpc.attacks.worst_case import DEFAULT_MEMBERS, worst_case
from medhpc.config import ConfigError, config_hash, from_dict, to_dict
from medhpc.models.heads.vib import VIBConfig, VIBHead
from medhpc.models.noise import NoiseSource

EPS = 0.03

# Deterministic members (no random start): an image's result does not depend on its batch, so
# the ensemble's outcome per image can be compared with each member run alone on every image.
MEMBERS = (
    AttackConfig("fgsm", eps=EPS),
    AttackConfig("pgd", eps=EPS, steps=5, random_init=False),
    AttackConfig("apgd_ce", eps=EPS, steps=10, random_init=False),
)


def ensemble(members: tuple[AttackConfig, ...] = MEMBERS, **kw: Any) -> AttackConfig:
    return AttackConfig("worst_case", eps=EPS, members=members, **kw)


def test_an_image_is_broken_iff_some_member_breaks_it_and_by_the_first_that_does(trained) -> None:
    x, y = trained.x, trained.y
    res = run_attack(trained.model, x, y, ensemble())
    alone = torch.stack([run_attack(trained.model, x, y, m).success for m in MEMBERS])
    assert torch.equal(res.success, alone.any(0))
    first = torch.where(alone.any(0), alone.int().argmax(0), torch.full_like(y, -1))
    assert torch.equal(res.broken_by, first)
    # so never weaker than its strongest member, and here strictly stronger than FGSM
    accuracy = (res.pred == y).float().mean()
    for m in MEMBERS:
        assert accuracy <= (run_attack(trained.model, x, y, m).pred == y).float().mean()
    assert 0 < res.success.sum() < len(y)
    assert len(set(res.broken_by.tolist())) >= 3  # -1 and at least two members broke images


def test_stays_in_the_ball_and_the_box_and_records_the_breaking_norm(trained) -> None:
    x = trained.x.clone()
    x[:, :, :2] = 1.0  # pixels at the bound: clipping matters
    res = run_attack(trained.model, x, trained.y, ensemble())
    assert res.linf.max() <= EPS + 1e-6
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.equal(res.min_norm[res.success], res.linf[res.success])
    assert torch.isinf(res.min_norm[~res.success]).all()
    assert torch.equal(res.broken_by >= 0, res.success)


def _spy(monkeypatch: pytest.MonkeyPatch, name: str, calls: list[dict[str, Any]]) -> None:
    """Replace attack ``name``'s function by a wrapper that records each call's batch and eot."""
    spec = ATTACKS[name]
    inner = spec.function

    @functools.wraps(inner)
    def spy(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, **kw: Any) -> Any:
        calls.append({"n": x.shape[0], "eot": kw.get("eot"), "y": y})
        return inner(model, x, y, **kw)

    monkeypatch.setitem(ATTACKS, name, dataclasses.replace(spec, function=spy))


def test_each_member_runs_only_on_the_images_still_robust(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    for name in ("fgsm", "pgd", "apgd_ce"):
        _spy(monkeypatch, name, calls)
    res = run_attack(trained.model, trained.x, trained.y, ensemble())
    sizes = [c["n"] for c in calls]
    robust_after = [int((res.broken_by == -1).sum() + (res.broken_by > k).sum()) for k in range(len(MEMBERS))]
    assert sizes[0] == len(trained.y)
    assert sizes[1:] == robust_after[:-1]
    assert sum(sizes) < len(MEMBERS) * len(trained.y)


def test_no_member_runs_once_every_image_is_broken(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    _spy(monkeypatch, "fgsm", calls)
    strong = (AttackConfig("pgd", eps=0.5, steps=10), AttackConfig("fgsm", eps=0.5))
    res = run_attack(trained.model, trained.x, trained.y, AttackConfig("worst_case", eps=0.5, members=strong))
    assert res.success.all() and (res.broken_by == 0).all()
    assert calls == []


class CoinFlip(nn.Module):
    """A stochastic two-class model whose prediction is a fair coin per draw, whatever the image:
    any single-draw "success" is luck."""

    def __init__(self) -> None:
        super().__init__()
        self.noise = NoiseSource()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seed, _ = self.noise.next()
        coin = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(seed))
        flat = x.flatten(1).mean(1) * self.w
        return torch.stack([flat, 3 * coin + flat], 1)


def test_a_stochastic_success_must_survive_fresh_draws() -> None:
    model = CoinFlip().eval()
    x = torch.rand(512, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(512, dtype=torch.long)
    members = [AttackConfig("fgsm", eps=0.1)]
    lucky = run_attack(model, x, y, members[0]).success.float().mean()
    once = worst_case(model, x, y, eps=0.1, members=members, recheck=1).success.float().mean()
    four = worst_case(model, x, y, eps=0.1, members=members).success.float().mean()
    assert 0.4 < lucky < 0.6  # one draw: half the images look broken
    assert 0.07 < once < 0.2  # three draws (the member's, one re-check, the final): 1/8
    assert four < 0.05  # six draws: 1/64
    assert four < once < lucky


def test_gradient_members_take_the_ensembles_eot_on_a_stochastic_model(
    trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    for name in ("fgsm", "pgd"):
        _spy(monkeypatch, name, calls)
    members = (AttackConfig("pgd", eps=EPS, steps=2), AttackConfig("fgsm", eps=EPS))
    x, y = trained.x[:8], trained.y[:8]
    run_attack(CoinFlip().eval(), x, y, ensemble(members, eot=3))
    assert [c["eot"] for c in calls] == [3] * len(calls) and calls
    calls.clear()
    run_attack(trained.model, x, y, ensemble(members, eot=3))  # deterministic: members keep their own
    assert [c["eot"] for c in calls] == [1] * len(calls)


class VIBNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.head = VIBHead(16, 2, VIBConfig(latent=16, beta=1e-2, eval_samples=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).logits


@pytest.fixture(scope="module")
def vib_net(blobs: Any) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """SmallCNN's convolutions with a VIB head (β 1e-2, 4 draws), trained on the blob images."""
    blob_images = blobs
    torch.manual_seed(0)
    model = VIBNet()
    x, y = blob_images(1024, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(300):
        idx = torch.randint(0, len(x), (64,), generator=g)
        out = model.head(model.features(x[idx]))
        loss = nn.functional.cross_entropy(out.logits, y[idx]) + 1e-2 * out.kl.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    xt, yt = blob_images(64, seed=3)
    return model, xt, yt


def test_on_a_vib_model_the_worst_case_with_eot_is_at_or_below_the_paper_rows_pgd_and_cw(vib_net) -> None:
    """The strong preset's members at test budgets (PGD as the paper's row, APGD-CE and -margin 20
    steps, FAB 10, Square 100 queries) with EOT 4, against the paper's PGD rows and its CW-L2."""
    model, x, y = vib_net
    clean = (run_attack(model, x, y, AttackConfig("none")).pred == y).float().mean()
    assert clean > 0.75
    members = (
        AttackConfig("pgd", eps=0.02, step_size=0.01, steps=5),
        AttackConfig("apgd", eps=0.02, loss="ce", steps=20),
        AttackConfig("apgd", eps=0.02, loss="margin", steps=20),
        AttackConfig("fab", eps=0.02, steps=10),
        AttackConfig("square", eps=0.02, queries=100),
    )
    worst = AttackConfig("worst_case", eps=0.02, members=members, eot=4)
    # the paper's PGD rows, and its CW-L2 at a tenth of CleverHans' iterations (5 × 100: a test budget)
    paper = [AttackConfig("pgd", eps=0.02, step_size=0.01, steps=s) for s in (1, 2, 5)]
    paper.append(AttackConfig("cw_l2", steps=100))
    acc = {c.name: float((run_attack(model, x, y, c).pred == y).float().mean()) for c in [worst, *paper]}
    assert acc[worst.name] < clean
    assert all(acc[worst.name] <= acc[c.name] for c in paper), acc


def test_evaluation_rows_count_the_images_each_member_broke_with_an_interval(trained) -> None:
    cfg = ensemble()
    result = evaluate_robustness(trained.model, [(trained.x, trained.y)], [cfg], progress=False)
    row = result["attacks"][0]
    breaks = row["broken_by"]
    assert [b["member"] for b in breaks] == [m.name for m in MEMBERS] + ["none"]
    assert sum(b["images"] for b in breaks) == row["n"] == len(trained.y)
    assert breaks[-1]["images"] == round((1 - row["success_rate"]) * row["n"])
    lo, hi = row["accuracy_interval"]
    assert 0 <= lo < row["accuracy"] < hi <= 1


def test_the_config_validates_members_and_keeps_them_in_its_hash_and_name() -> None:
    members = [{"attack": "fgsm", "eps": 0.02}, {"attack": "pgd", "eps": 0.02}]
    cfg = from_dict(AttackConfig, {"attack": "worst_case", "eps": 0.02, "members": members})
    assert from_dict(AttackConfig, to_dict(cfg)) == cfg
    other = dataclasses.replace(cfg, members=cfg.members[:1])
    assert config_hash(other) != config_hash(cfg) and other.name != cfg.name
    assert cfg.eot == 20
    bad = {
        "members[1]": [{"attack": "fgsm", "eps": 0.02}, {"attack": "pgd", "eps": 0.03}],
        "members[0]": [{"attack": "cw_l2"}],
    }
    for key, members in bad.items():
        with pytest.raises(ConfigError, match=re.escape(key)):
            from_dict(AttackConfig, {"attack": "worst_case", "eps": 0.02, "members": members})
    with pytest.raises(AttackConfigError, match="members"):
        AttackConfig("worst_case", eps=0.02, members=(AttackConfig("worst_case", eps=0.02, members=MEMBERS[:1]),))
    with pytest.raises(AttackConfigError, match="members"):
        AttackConfig("worst_case", eps=0.02, members=())
    with pytest.raises(ValueError, match="members"):
        worst_case(nn.Linear(2, 2), torch.rand(2, 2), eps=0.02)


def test_left_out_members_are_the_defaults_at_the_ensembles_eps_and_norm() -> None:
    cfg = AttackConfig("worst_case", eps=0.5, norm="l2")
    assert cfg.members is not None
    assert [m.attack for m in cfg.members] == [m["attack"] for m in DEFAULT_MEMBERS]
    assert all(m.eps == 0.5 and m.norm == "l2" for m in cfg.members)
    assert [m.loss for m in cfg.members][:2] == ["ce", "margin"]


def test_the_ensembles_clip_range_reaches_its_members(trained) -> None:
    """``clip`` None (the scripts' unclipped mode) and a narrower box both pass to every member."""
    x, y = trained.x[:16], trained.y[:16]
    members = (AttackConfig("fgsm", eps=0.3), AttackConfig("pgd", eps=0.3, steps=3))
    free = run_attack(trained.model, x, y, AttackConfig("worst_case", eps=0.3, members=members, clip=None))
    assert free.x_adv.min() < 0 or free.x_adv.max() > 1
    boxed = run_attack(trained.model, x, y, AttackConfig("worst_case", eps=0.3, members=members, clip=(0.2, 0.8)))
    assert boxed.x_adv.min() >= 0.2 and boxed.x_adv.max() <= 0.8
    with pytest.raises(AttackConfigError, match=re.escape("members[0]: 'fab' needs a finite clip range")):
        AttackConfig("worst_case", eps=0.3, members=(AttackConfig("fab", eps=0.3),), clip=None)
