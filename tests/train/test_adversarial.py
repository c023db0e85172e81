"""Adversarial training: its config, the three methods' examples and losses, the robust kept
model, and PGD-AT's robustness on the blob images.

The proof of robustness (:func:`test_pgd_at_is_robust_where_plain_training_is_not`) trains the
test-only ``tiny`` trunk (tests/train/conftest.py) through the whole loop on the attack tests'
blob images (16 px, through a prepared cache: 480 train / 30 val / 90 test), because a
from-scratch ResNet50 barely learns the synthetic fundus task in a few CPU epochs
(test_learning.py) and would not survive an attack. Measured on the shared 2-core CPU
(6 epochs, batch 64, Adam lr 3e-3, ε = 0.05; test accuracy on 90 images [95 % Wilson
interval], under PGD-10 at ε with a random start; the test logs them):

=================  ===================  ===================
model              clean                under PGD
=================  ===================  ===================
plain              0.956 [0.891, 0.983]  0.122 [0.070, 0.206]
PGD-AT (3 steps)   0.744 [0.646, 0.823]  0.400 [0.305, 0.503]
=================  ===================  ===================

Robust accuracy +28 points, clean accuracy −21 points. Both runs take about 3 s on a quiet
machine (over 40 s when the cores are shared).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from medhpc.config import ConfigError, config_hash
from medhpc.data.cache import CacheLoader
from medhpc.models import ModelConfig, build_model
from medhpc.models.checkpoint import load as load_ckpt
from medhpc.train import from_mapping, load_train_config, loop, run_dir, train
from medhpc.train.adversarial import (
    METHODS,
    AdversarialConfig,
    Method,
    trades_examples,
    trades_loss,
    validation_perturb,
)
from medhpc.train.evaluate import metrics_of, predict

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


def images(n: int, size: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.arange(n) % 2


def base(**extra: Any) -> dict[str, Any]:
    return {"model": {"arch": "resnet50", "head": "linear"}, "data": {"cache": "c.h5"}, **extra}


# ---------------------------------------------------------------------------------------------
# The config


def test_the_methods_registry_is_the_configs_choice() -> None:
    assert tuple(METHODS) == Method.__args__  # type: ignore[attr-defined]


def test_left_out_settings_are_filled_from_the_method() -> None:
    pgd = from_mapping(base(adversarial={"method": "pgd", "eps": 0.02})).adversarial
    assert pgd is not None and (pgd.steps, pgd.step_size, pgd.beta, pgd.random_init) == (10, 0.005, None, True)
    fast = AdversarialConfig("fgsm", eps=0.04)
    assert (fast.steps, fast.step_size) == (1, pytest.approx(0.05))  # Wong et al.: α = 1.25 ε
    trades = AdversarialConfig("trades", eps=0.03, steps=5)
    assert trades.beta == 6.0 and trades.step_size == pytest.approx(0.015)  # 2.5 ε / steps


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ("{method: madry, eps: 0.03}", r"adversarial\.method: must be one of 'pgd', 'trades', 'fgsm', got 'madry'"),
        ("{method: pgd}", r"adversarial\.eps: missing \(required\)"),
        ("{method: pgd, eps: 0}", r"adversarial\.eps: must be in \(0, 1\]"),
        ("{method: pgd, eps: 8}", r"adversarial\.eps: must be in \(0, 1\] \(pixel units"),
        ("{method: pgd, eps: 0.03, steps: 0}", r"adversarial\.steps: must be >= 1, got 0"),
        ("{method: fgsm, eps: 0.03, steps: 3}", r"adversarial\.steps: fast FGSM-AT takes one step, got 3"),
        ("{method: pgd, eps: 0.03, step_size: 0}", r"adversarial\.step_size: must be > 0"),
        ("{method: pgd, eps: 0.03, beta: 6}", r"adversarial\.beta: only TRADES weighs a robust term"),
        ("{method: trades, eps: 0.03, beta: -1}", r"adversarial\.beta: must be >= 0"),
        ("{method: pgd, eps: 0.03, val_steps: 0}", r"adversarial\.val_steps: must be >= 1"),
        ("{method: pgd, eps: 0.03, stpes: 3}", r"adversarial\.stpes: unknown key \(did you mean 'steps'\?\)"),
        ("{method: pgd, eps: 0.03, random_init: maybe}", r"adversarial\.random_init: expected true or false"),
        ("pgd", r"adversarial: expected a mapping of keys, got str 'pgd'"),
    ],
)
def test_bad_adversarial_sections_name_the_key_and_file(tmp_path: Path, section: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: {{arch: resnet50}}\ndata: {{cache: c.h5}}\nadversarial: {section}\n")
    with pytest.raises(ConfigError, match=rf"bad\.yaml: {match}"):
        load_train_config(path)


#: config_hash of the shipped training configs before ``adversarial`` existed (commit 062674e).
HASHES = {
    "train-attention.yaml": "71eb175b86fe",
    "train-base.yaml": "203f5bcc390f",
    "train-demo.yaml": "4f8aa1b42774",
    "train-vib.yaml": "bf22c05934d7",
}


def test_existing_training_configs_keep_their_hashes() -> None:
    """``adversarial`` was added later: left out (or null) it is not hashed, so no finished
    training run is redone; set, it names another run, whose folder shows the method."""
    for name, digest in HASHES.items():
        assert config_hash(load_train_config(ROOT / "medhpc" / "configs" / name)) == digest, name
    assert config_hash(from_mapping(base())) == "7e84c860beb1" == config_hash(from_mapping(base(adversarial=None)))
    pgd = from_mapping(base(adversarial={"method": "pgd", "eps": 0.02}))
    assert config_hash(pgd) != "7e84c860beb1"
    assert config_hash(pgd) != config_hash(from_mapping(base(adversarial={"method": "pgd", "eps": 0.03})))
    assert run_dir(pgd).name == f"resnet50-linear-pgdat-{config_hash(pgd)}"
    assert run_dir(from_mapping(base())).name == "resnet50-linear-7e84c860beb1"


# ---------------------------------------------------------------------------------------------
# The methods


def plain_loss_of(cfg: dict[str, Any]) -> Any:
    train_cfg = from_mapping(cfg)
    kl = train_cfg.model.head_spec.loss_weight(train_cfg.model)
    return lambda out, y: loop._loss(out, y, None, train_cfg, kl)


@pytest.mark.parametrize("head", ["linear", "vib"])
def test_trades_at_beta_0_is_plain_training_on_the_same_batch(tiny_arch: str, head: str) -> None:
    """Identical first-step gradients and weights after one SGD step (the VIB head's training
    noise is the same too: crafting draws nothing from torch's global generator). Only the
    BatchNorm running statistics differ: TRADES' adversarial forward runs in training mode,
    as in Zhang et al.'s code."""
    cfg = {"model": {"arch": tiny_arch, "head": head}, "data": {"cache": "c.h5"}}
    if head == "vib":
        cfg["model"]["vib"] = {"latent": 8}
    plain = plain_loss_of(cfg)
    torch.manual_seed(0)
    a = build_model(from_mapping(cfg).model).train()
    b = copy.deepcopy(a)
    x, y = images(16, 16)
    steps = {}
    for name, model in (("plain", a), ("trades", b)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(7)
        if name == "plain":
            loss = plain(model.forward_train(x), y)
        else:
            loss = trades_loss(model, x, y, AdversarialConfig("trades", eps=0.03, steps=2, beta=0.0), 11, plain)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        opt.step()
        steps[name] = (loss.detach(), grads)
    assert torch.equal(steps["plain"][0], steps["trades"][0])
    assert steps["plain"][1].keys() == steps["trades"][1].keys() and steps["plain"][1]
    assert [k for k, g in steps["plain"][1].items() if not torch.equal(g, steps["trades"][1][k])] == []
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert [k for k in pa if not torch.equal(pa[k], pb[k])] == []
    ra, rb = a.state_dict(), b.state_dict()
    assert not all(torch.equal(ra[k], rb[k]) for k in ra if k.endswith("running_mean"))


@pytest.mark.parametrize("method", list(METHODS))
def test_examples_are_made_in_eval_mode_in_the_ball_from_their_own_seed(tiny_arch: str, method: str) -> None:
    """The step's inputs are adversarial examples in the ε-ball and [0, 1]; crafting left the
    BatchNorm statistics and torch's global RNG untouched and the model in training mode;
    the same seed gives the same examples, another seed others."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=tiny_arch)).train()
    x, y = images(16, 16)
    cfg = AdversarialConfig(method, eps=0.03)  # type: ignore[arg-type]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    forward = model.forward_train
    seen: list[tuple[torch.Tensor, bool, bool, bool]] = []

    def record(inputs: torch.Tensor) -> Any:
        same_buffers = all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())
        seen.append((inputs.detach().clone(), model.training, same_buffers, torch.equal(torch.get_rng_state(), rng)))
        return forward(inputs)

    model.forward_train = record  # type: ignore[method-assign]
    runs = []
    for seed in (3, 3, 4):
        seen.clear()
        rng = torch.get_rng_state()
        loss = cfg.spec.loss(model, x, y, cfg, seed, lambda out, y: torch.nn.functional.cross_entropy(out.logits, y))
        assert loss.requires_grad
        x_adv, training, same_buffers, same_rng = seen[-1]
        assert training and same_rng and seen[0][2]  # crafting changed no buffer, drew no global random number
        d = (x_adv - x).abs().amax()
        assert 0 < d <= cfg.eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        runs.append(x_adv)
        model.load_state_dict(buffers)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_trades_examples_raise_the_kl(tiny_arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=tiny_arch)).eval()
    x, _ = images(32, 16)
    p = torch.softmax(model(x), -1)
    kl = {}
    for steps in (1, 10):
        x_adv = trades_examples(model, x, AdversarialConfig("trades", eps=0.05, steps=steps), seed=1)
        with torch.no_grad():
            q = torch.log_softmax(model(x_adv), -1)
        kl[steps] = (p * (p.log() - q)).sum(-1).mean().item()
    assert 0 < kl[1] < kl[10]


# ---------------------------------------------------------------------------------------------
# Training runs


def blob_run(cache: Path, out: Path, arch: str, adversarial: dict[str, Any] | None, **extra: Any) -> Path:
    cfg = {
        "model": {"arch": arch, "head": "linear"},
        "data": {"cache": str(cache)},
        "optim": {"name": "adam", "lr": 3e-3},
        "epochs": 6,
        "batch_size": 64,
        "out": str(out),
        "adversarial": adversarial,
        **extra,
    }
    return train(from_mapping(cfg), progress=False)


EPS = 0.05


@pytest.fixture(scope="module")
def blob_runs(blob_cache: Path, tiny_arch: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("at-runs")
    return {
        "plain": blob_run(blob_cache, out, tiny_arch, None),
        "pgd": blob_run(blob_cache, out, tiny_arch, {"method": "pgd", "eps": EPS, "steps": 3}),
    }


def under_pgd(run: Path, cache: Path) -> dict[str, Any]:
    """The kept model's test metrics under PGD-10 at ε (random start, fixed seed)."""
    model = build_model(load_train_config(run / "config.yaml").model)
    model.load_state_dict(load_ckpt(run / "best.pt")["model"])
    with CacheLoader(cache, "test", batch_size=64) as loader:
        attack = validation_perturb(AdversarialConfig("pgd", EPS), seed=0, epoch=None)
        pred = predict(model, loader, torch.device("cpu"), perturb=attack)
    return metrics_of(pred)


def test_pgd_at_is_robust_where_plain_training_is_not(blob_runs: dict[str, Path], blob_cache: Path) -> None:
    clean = {k: json.loads((r / "metrics.json").read_text())["test"] for k, r in blob_runs.items()}
    robust = {k: under_pgd(r, blob_cache) for k, r in blob_runs.items()}
    summary = {k: {"clean": (clean[k]["accuracy"], clean[k]["accuracy_ci95"]),
                   "pgd": (robust[k]["accuracy"], robust[k]["accuracy_ci95"])} for k in blob_runs}  # fmt: skip
    log.warning("test accuracy [95 %% Wilson], n = %d: %s", clean["plain"]["n"], summary)
    # Beyond the intervals: the PGD-AT model's lower bound above the plain model's upper bound.
    assert robust["pgd"]["accuracy_ci95"][0] > robust["plain"]["accuracy_ci95"][1], summary
    assert clean["plain"]["accuracy"] >= 0.85, summary  # the plain model did learn the task


def test_an_adversarial_run_keeps_the_model_with_the_lowest_robust_validation_loss(blob_runs: dict[str, Path]) -> None:
    run = blob_runs["pgd"]
    assert run.name.startswith("tiny-linear-pgdat-")
    history = json.loads((run / "history.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert all({"val_loss", "val_accuracy", "val_robust_loss", "val_robust_accuracy"} <= h.keys() for h in history)
    best = 1 + min(range(len(history)), key=lambda i: history[i]["val_robust_loss"])
    assert metrics["best_epoch"] == best == load_ckpt(run / "best.pt")["epoch"]
    assert metrics["kept_by"] == "val_robust_loss"
    assert metrics["best_val_loss"] == pytest.approx(history[best - 1]["val_robust_loss"])
    assert metrics["val"]["loss"] == pytest.approx(history[best - 1]["val_loss"], rel=1e-5)  # clean, reported too
    assert metrics["val_robust"]["loss"] == pytest.approx(metrics["best_val_loss"], rel=1e-5)  # the same attack
    assert metrics["val_robust"]["accuracy"] <= metrics["val"]["accuracy"]
    plain = json.loads((blob_runs["plain"] / "history.json").read_text())
    assert not any("val_robust_loss" in h for h in plain)  # a plain run's history is what it was
    assert json.loads((blob_runs["plain"] / "metrics.json").read_text())["kept_by"] == "val_loss"


def test_vib_plus_at_trains_the_head_on_the_frozen_backbone(
    blob_runs: dict[str, Path], blob_cache: Path, tiny_arch: str
) -> None:
    """VIB + AT: PGD examples crafted through the whole model, the frozen backbone included;
    only the head learns."""
    run = train(from_mapping({
        "preset": "vib", "model": {"arch": tiny_arch, "vib": {"latent": 8, "eval_samples": 4}},
        "data": {"cache": str(blob_cache)}, "init_from": str(blob_runs["plain"]), "epochs": 1,
        "adversarial": {"method": "pgd", "eps": EPS, "steps": 2, "val_steps": 2},
        "out": str(blob_runs["plain"].parent),
    }), progress=False)  # fmt: skip
    assert run.name.startswith("tiny-vib-pgdat-")
    base_state = load_ckpt(blob_runs["plain"] / "best.pt")["model"]
    vib = load_ckpt(run / "best.pt")["model"]
    backbone = [k for k in base_state if k.startswith("backbone.")]
    assert backbone and all(torch.equal(base_state[k], vib[k]) for k in backbone)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kept_by"] == "val_robust_loss" and metrics["val_robust"]["n"] == metrics["val"]["n"]
