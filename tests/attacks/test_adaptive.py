"""The adaptive attack on (classifier + uncertainty detector), and the detector it attacks.

Two constructed models make the non-adaptive attack easy to detect, so that what the adaptive
one gains is measurable: ``Toy`` (3 classes, entropy) and ``NoisyVIB`` (medhpc's VIB head with
its reparameterised sampling, mutual information). In both the input has two directions: f,
which PGD's sign steps follow (raising both wrong classes together, or the head's noise), and
g, which only an attacker that watches the score uses (one wrong class, or the noise-free
margin). Clean images are x = 0.5 + N(0, 0.02²) on 8 × 8 pixels, all of class 0.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medhpc.attacks import AttackConfig, Detector, adaptive, calibrate, pgd, run_attack
from medhpc.attacks.config import AttackConfigError
from medhpc.attacks.detector import SCORES, deployed_probs, fit_threshold, score_torch, score_values
from medhpc.metrics import roc_auc
from medhpc.models.heads.vib import VIBConfig, VIBHead

log = logging.getLogger(__name__)
EPS = 0.1


def _checker() -> torch.Tensor:
    v = torch.ones(8, 8)
    v[::2, 1::2] = -1
    v[1::2, ::2] = -1
    return v.view(1, 1, 8, 8)


class Toy(nn.Module):
    """Logits (0, A(f − s0) + B g, A(f − s0) − B g) with f = mean(x − ½)/0.1, g the same along a
    checkerboard. A > B: PGD's sign step raises f on every pixel, leaves g at 0 and lands where
    classes 1 and 2 tie (entropy ≈ log 2); moving g instead gives a confident class 1."""

    def __init__(self, a: float = 12.0, b: float = 8.0, s0: float = 0.25) -> None:
        super().__init__()
        self.a, self.b, self.s0 = a, b, s0
        self.register_buffer("v", _checker())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - 0.5
        f, g = d.mean((1, 2, 3)) / 0.1, (d * self.v).mean((1, 2, 3)) / 0.1
        z = self.a * (f - self.s0)
        return torch.stack([torch.zeros_like(f), z + self.b * g, z - self.b * g], -1)


class NoisyVIB(nn.Module):
    """A VIB head (latent 2, 12 draws, mean logits) on the features (f, g): μ₁ = 12 (f − ¼) + 8 g,
    σ₁ = softplus(½ + 20 f). Raising f (PGD's way) crosses the boundary into large noise, where
    the draws disagree (high mutual information); raising g crosses it with the noise small."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("v", _checker())
        self.head = VIBHead(2, 2, VIBConfig(latent=2, beta=1e-2, eval_samples=12, relu=False))
        with torch.no_grad():
            self.head.mu.weight.copy_(torch.tensor([[12.0, 8.0], [0.0, 0.0]]))
            self.head.mu.bias.copy_(torch.tensor([-3.0, 0.0]))
            self.head.a.weight.copy_(torch.tensor([[20.0, 0.0], [0.0, 0.0]]))
            self.head.a.bias.copy_(torch.tensor([5.5, 0.0]))
            self.head.decoder.weight.copy_(torch.tensor([[-0.5, 0.0], [0.5, 0.0]]))
            self.head.decoder.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        d = x - 0.5
        return torch.stack([d.mean((1, 2, 3)) / 0.1, (d * self.v).mean((1, 2, 3)) / 0.1], 1).view(-1, 2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).logits

    def logits_and_draws(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.features(x))
        assert out.samples is not None
        return out.logits, out.samples

    def sample_logits(self, x: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        out = self.head(self.features(x), samples)
        assert out.samples is not None
        return out.samples


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.02 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1), torch.zeros(n, dtype=torch.long)


def deployed(model: nn.Module, det: Detector, x: torch.Tensor, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The deployed detector's scores and the prediction, under a noise draw the attack never saw."""
    probs, draws = deployed_probs(model, x, seed, det.samples)
    scores = score_values(det.score, probs.numpy(), None if draws is None else draws.numpy())
    return scores, probs.argmax(-1).numpy()


def auroc(clean: np.ndarray, adv: np.ndarray) -> float:
    value = roc_auc(np.r_[np.zeros(clean.size), np.ones(adv.size)], np.r_[clean, adv])
    assert value is not None
    return value


# --- the toy case: entropy, detected almost perfectly until the attacker adapts ------------------


def test_on_the_toy_the_adaptive_attack_brings_entropy_detection_to_chance_and_stays_in_the_ball() -> None:
    model = Toy().eval()
    xv, yv = images(200, 1)
    x, y = images(100, 2)
    det = calibrate(model, [(xv, yv)], score="predictive_entropy")
    clean, _ = deployed(model, det, x)
    plain = run_attack(model, x, y, AttackConfig("pgd", eps=EPS, steps=10))
    adv_plain, _ = deployed(model, det, plain.x_adv)
    cfg = AttackConfig("adaptive", eps=EPS, steps=10, search_steps=10, score="predictive_entropy")
    res = run_attack(model, x, y, cfg, detector=det)
    adv, pred = deployed(model, det, res.x_adv)
    ok = res.success.numpy()
    found = {"pgd_auroc": auroc(clean, adv_plain[plain.success.numpy()]), "adaptive_auroc": auroc(clean, adv[ok]),
             "adaptive_success": ok.mean(), "evades": (ok & ~det.rejects(adv)).mean(),
             "pgd_evades": (plain.success.numpy() & ~det.rejects(adv_plain)).mean()}  # fmt: skip
    log.info("toy: %s", found)
    assert plain.success.float().mean() == 1.0 and found["pgd_auroc"] >= 0.95 and found["pgd_evades"] == 0
    assert found["adaptive_auroc"] <= 0.6
    assert found["adaptive_success"] >= 0.9 and found["evades"] >= 0.8
    assert (pred != 0).mean() == pytest.approx(found["adaptive_success"])
    assert float(res.linf.max()) <= EPS + 1e-6 and bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    assert torch.isnan(res.const).sum() < 20  # λ recorded where the attacker got past the detector


# --- the stochastic head: mutual information, with and without EOT -------------------------------


def test_on_a_vib_head_the_adaptive_attack_with_eot_leaves_a_lower_system_robust_accuracy() -> None:
    """System robust accuracy: classified correctly or rejected, under the deployed detector with
    a fresh noise draw. Without EOT (one draw of the head per step) the comparison is logged."""
    torch.manual_seed(0)
    model = NoisyVIB().eval()
    xv, yv = images(200, 1)
    x, y = images(64, 2)
    det = calibrate(model, [(xv, yv)], score="mutual_information")
    assert det.samples == 12
    found: dict[str, float] = {}
    for eot in (8, 1):
        for cfg in (AttackConfig("pgd", eps=EPS, steps=10, eot=eot),
                    AttackConfig("adaptive", eps=EPS, steps=10, eot=eot, score="mutual_information")):  # fmt: skip
            res = run_attack(model, x, y, cfg, detector=det if cfg.attack == "adaptive" else None)
            scores, pred = deployed(model, det, res.x_adv)
            found[cfg.name] = float(((pred == 0) | det.rejects(scores)).mean())
            assert float(res.linf.max()) <= EPS + 1e-6
    log.info("VIB system robust accuracy: %s", found)
    assert found["pgd-linf-eps0.1-s10-eot8"] >= 0.9  # the non-adaptive attack is caught
    assert found["adaptive-linf-eps0.1-s10-mi-eot8"] <= found["pgd-linf-eps0.1-s10-eot8"] - 0.2


# --- λ = 0 is the plain attack ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["toy", "vib_eot"])
def test_with_lambda_zero_and_one_round_it_is_pgd_for_the_same_seed(case: str) -> None:
    model: nn.Module = Toy().eval() if case == "toy" else NoisyVIB().eval()
    score = "predictive_entropy" if case == "toy" else "mutual_information"
    eot = 1 if case == "toy" else 3
    x, y = images(16, 3)
    det = calibrate(model, [images(50, 4)], score=score)
    plain = pgd(model, x, y, eps=EPS, steps=6, eot=eot, seed=11)
    same = adaptive(model, x, y, eps=EPS, steps=6, eot=eot, seed=11, score=score, detector=det,
                    initial_lambda=0.0, search_steps=1)  # fmt: skip
    for name in ("x_adv", "pred", "success", "l2", "linf", "labels"):
        assert torch.equal(getattr(plain, name), getattr(same, name)), name
    aware = adaptive(model, x, y, eps=EPS, steps=6, eot=eot, seed=11, score=score, detector=det,
                     initial_lambda=10.0, search_steps=1)  # fmt: skip
    assert not torch.equal(plain.x_adv, aware.x_adv)  # the detector's term is not inert


def test_the_search_starts_with_plain_pgd_so_it_keeps_every_image_pgd_got_past_the_detector() -> None:
    model = Toy(b=11.0).eval()  # B near A: PGD evades on some images by itself
    x, y = images(64, 6)
    det = calibrate(model, [images(200, 7)], score="predictive_entropy")
    plain = pgd(model, x, y, eps=EPS, steps=10, seed=3)
    res = adaptive(model, x, y, eps=EPS, steps=10, seed=3, score="predictive_entropy", detector=det, search_steps=3)
    s_plain, p_plain = deployed(model, det, plain.x_adv)
    s_adapt, p_adapt = deployed(model, det, res.x_adv)
    evaded_plain = (p_plain != 0) & ~det.rejects(s_plain)
    evaded = (p_adapt != 0) & ~det.rejects(s_adapt)
    assert evaded.sum() >= evaded_plain.sum()
    assert (evaded | ~evaded_plain).all()


# --- the detector -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.1, 0.25])
@pytest.mark.parametrize("case", ["toy", "vib"])
def test_the_calibrated_threshold_gives_the_chosen_fpr_on_its_validation_images(case: str, fpr: float) -> None:
    model: nn.Module = Toy().eval() if case == "toy" else NoisyVIB().eval()
    score = "predictive_entropy" if case == "toy" else "mutual_information"
    xv, yv = images(203, 8)
    batches = [(xv[i : i + 32], yv[i : i + 32]) for i in range(0, 203, 32)]
    det = calibrate(model, batches, score=score, fpr=fpr, seed=4)
    # re-score the same images the way a shard of the val split stores them (same seeds per batch)
    from medhpc.attacks.common import derive_seed

    starts = range(0, 203, 32)
    rescored = np.concatenate([deployed(model, det, xb, seed=derive_seed(4, i, 1))[0]
                               for i, (xb, _) in zip(starts, batches, strict=True)])  # fmt: skip
    rejected = int(det.rejects(rescored).sum())
    assert rejected == det.rejected
    assert abs(rejected - fpr * 203) <= 1, (rejected, fpr * 203)
    assert det.target <= det.threshold and det.n == 203


def test_fit_threshold_counts_ties_and_names_bad_input() -> None:
    threshold, target, rejected = fit_threshold(np.arange(100.0), 0.05)
    assert (threshold, rejected) == (94.0, 5) and target == 49.0
    assert fit_threshold(np.r_[np.zeros(90), np.ones(10)], 0.05)[2] == 0  # tied at the cut: none rejected
    with pytest.raises(ValueError, match="no clean scores"):
        fit_threshold(np.array([]), 0.05)
    with pytest.raises(ValueError, match="not finite"):
        fit_threshold(np.array([0.1, np.nan]), 0.05)
    with pytest.raises(ValueError, match="fpr must be in"):
        fit_threshold(np.arange(5.0), 1.0)


@pytest.mark.parametrize("score", SCORES)
def test_the_attackers_differentiable_score_equals_the_deployed_one(score: str) -> None:
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(12, 32, 3, generator=g)
    logits[:, 0, 0] = 80.0  # a probability that underflows to 0 in float32
    draws = torch.softmax(logits, -1).numpy()
    expected = score_values(score, draws.mean(0), draws)
    got = score_torch(score, logits.requires_grad_(True))
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-4, atol=1e-6)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    assert torch.isfinite(grad).all()


def test_detector_round_trip_and_its_errors() -> None:
    det = calibrate(Toy().eval(), [images(40, 9)], score="predictive_entropy")
    assert Detector.from_dict(det.to_dict()) == det
    with pytest.raises(ValueError, match="missing threshold"):
        Detector.from_dict({k: v for k, v in det.to_dict().items() if k != "threshold"})
    with pytest.raises(ValueError, match="unknown key"):
        Detector.from_dict({**det.to_dict(), "thresh": 1})
    with pytest.raises(ValueError, match="score must be one of"):
        Detector.from_dict({**det.to_dict(), "score": "entropy"})
    with pytest.raises(ValueError, match="deterministic model"):
        calibrate(Toy().eval(), [images(40, 9)], score="mutual_information")


# --- configs and refusals ---------------------------------------------------------------------------


def test_configs_name_the_detector_and_refuse_what_cannot_run() -> None:
    cfg = AttackConfig("adaptive", eps=0.02, steps=5, step_size=0.01, score="mutual_information", eot=20)
    assert cfg.name == "adaptive-linf-eps0.02-s5-mi-eot20"
    assert (cfg.fpr, cfg.target_quantile, cfg.initial_lambda, cfg.search_steps) == (0.05, 0.5, 0.0, 5)
    assert cfg.non_adaptive() == AttackConfig("pgd", eps=0.02, steps=5, step_size=0.01, eot=20)
    assert AttackConfig("pgd", eps=0.02).non_adaptive() is None
    with pytest.raises(AttackConfigError, match="score"):
        AttackConfig("adaptive", eps=0.02, score="entropy")  # type: ignore[arg-type]
    with pytest.raises(AttackConfigError, match="fpr"):
        AttackConfig("adaptive", eps=0.02, fpr=1.0)
    with pytest.raises(AttackConfigError, match="not a parameter of 'pgd'"):
        AttackConfig("pgd", eps=0.02, score="variance")
    with pytest.raises(AttackConfigError, match=r"members\[0\]"):
        AttackConfig("worst_case", eps=0.02, members=(AttackConfig("adaptive", eps=0.02),))
    model, (x, y) = Toy().eval(), images(4, 0)
    with pytest.raises(ValueError, match="pass it as detector="):
        run_attack(model, x, y, AttackConfig("adaptive", eps=0.02))
    det = calibrate(model, [images(40, 9)], score="predictive_entropy")
    with pytest.raises(ValueError, match="only for calibrated attacks"):
        run_attack(model, x, y, AttackConfig("pgd", eps=0.02), detector=det)
    with pytest.raises(ValueError, match="fitted for score 'predictive_entropy', fpr 0.05"):
        run_attack(model, x, y, AttackConfig("adaptive", eps=0.02, fpr=0.1), detector=det)
    vib_det = dataclasses.replace(det, score="mutual_information")
    with pytest.raises(ValueError, match="deterministic model"):
        run_attack(model, x, y, AttackConfig("adaptive", eps=0.02, score="mutual_information"), detector=vib_det)


def test_robustness_rows_of_an_adaptive_attack_give_the_system_accuracy_and_skip_masking_rules() -> None:
    from medhpc.attacks import evaluate_robustness

    model = Toy().eval()
    det = calibrate(model, [images(200, 1)], score="predictive_entropy")
    attacks = [AttackConfig("fgsm", eps=EPS), AttackConfig("adaptive", eps=EPS, steps=10, search_steps=4)]
    out: Any = evaluate_robustness(model, [images(64, 2)], attacks, progress=False, detectors={1: det})
    row = out["attacks"][1]
    assert row["detector"]["threshold"] == det.threshold
    assert 0 <= row["system_accuracy"] - row["accuracy"] <= row["rejected"] + 1e-12
    lo, hi = row["system_accuracy_interval"]
    assert lo <= row["system_accuracy"] <= hi
    assert all("adaptive" not in w["attacks"][0] for w in out["warnings"])


SYNCS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy")


@pytest.mark.parametrize("case", ["toy", "vib_eot"])
def test_the_attack_reads_no_tensor_value_on_the_host(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a tensor's value reaches Python is patched to raise during the attack, the λ
    search included (the CPU stand-in for CUDA's sync debug mode, which test_gpu.py uses)."""
    model: nn.Module = Toy().eval() if case == "toy" else NoisyVIB().eval()
    score = "predictive_entropy" if case == "toy" else "mutual_information"
    x, y = images(8, 3)
    det = calibrate(model, [images(50, 4)], score=score)

    def refuse(name: str) -> object:
        def read(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            raise AssertionError(f"host read: Tensor.{name}")

        return read

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, refuse(name))
    res = adaptive(model, x, y, eps=EPS, steps=3, search_steps=3, eot=2, score=score, detector=det)
    monkeypatch.undo()
    assert res.x_adv.shape == x.shape
