"""AttackConfig: validated on construction and on load (errors name the key and the file),
defaults filled per attack so the hash says what ran, the paper's rows, and run_attack."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medhpc.attacks import AttackConfig, paper_attacks, pgd, run_attack, spsa
from medhpc.config import ConfigError, config_hash, from_dict, load, to_dict


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"attack": "pgd", "eps": -0.1}, "eps"),
        ({"attack": "pgd"}, "eps"),
        ({"attack": "deepfool", "eps": 0.1}, "attack"),
        ({"attack": "pgd", "eps": 0.1, "steps": 0}, "steps"),
        ({"attack": "spsa", "eps": 0.1, "samples": 0}, "samples"),
        ({"attack": "cw_l2", "eps": 0.1}, "eps"),
        ({"attack": "cw_l2", "lr": -1.0}, "lr"),
        ({"attack": "cw_l2", "clip": None}, "clip"),
        ({"attack": "fgsm", "eps": 0.1, "steps": 3}, "steps"),
        ({"attack": "fgsm", "eps": 0.1, "samples": 3}, "samples"),
        ({"attack": "pgd", "eps": 0.1, "label_mode": "gold"}, "label_mode"),
        ({"attack": "pgd", "eps": 0.1, "targeted": True, "label_mode": "pred"}, "label_mode"),
        ({"attack": "pgd", "eps": 0.1, "clip": (1.0, 0.0)}, "clip"),
        ({"attack": "apgd_ce", "eps": 0.1, "restarts": 0}, "restarts"),
    ],
)
def test_impossible_values_raise_naming_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        AttackConfig(**kwargs)
    with pytest.raises(ConfigError, match=rf"sweep\.yaml: {key}"):
        from_dict(
            AttackConfig,
            {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
            source="sweep.yaml",
        )


def test_load_from_yaml_fills_defaults(tmp_path: Path) -> None:
    path = tmp_path / "attack.yaml"
    path.write_text("attack: pgd\neps: 0.02\nsteps: 5\nclip: [0, 1]\n", encoding="utf-8")
    cfg = load(AttackConfig, path)
    assert cfg == AttackConfig("pgd", eps=0.02, steps=5)
    assert cfg.norm == "linf" and cfg.random_init is True and cfg.eot == 1
    assert cfg.step_size == pytest.approx(0.01)  # 2.5 ε / steps
    assert cfg.samples is None and cfg.search_steps is None  # not PGD's parameters
    assert from_dict(AttackConfig, to_dict(cfg)) == cfg


def test_unknown_key_in_a_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "attack.yaml"
    path.write_text("attack: pgd\neps: 0.02\nstpes: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"attack\.yaml: stpes: unknown key \(did you mean 'steps'\?\)"):
        load(AttackConfig, path)


def test_hash_names_what_ran() -> None:
    a = AttackConfig("spsa", eps=0.05)
    assert config_hash(a) == config_hash(AttackConfig("spsa", eps=0.05, steps=5, samples=128))
    assert config_hash(a) != config_hash(AttackConfig("spsa", eps=0.1))
    # The memory budget does not change the result, so not the hash either.
    assert config_hash(a) == config_hash(AttackConfig("spsa", eps=0.05, max_batch_bytes=2**20))


def test_paper_attacks_are_the_appendix_rows() -> None:
    rows = paper_attacks()
    names = [r.name for r in rows]
    assert names == [
        "none", "fgsm-linf-eps0.02", "cw_l2-s1000",
        "pgd-linf-eps0.02-s1", "pgd-linf-eps0.02-s2", "pgd-linf-eps0.02-s5",
        "spsa-linf-eps0.02-s5", "spsa-linf-eps0.05-s5", "spsa-linf-eps0.1-s5", "spsa-linf-eps0.5-s5",
        "spsa-linf-eps1-s5",
    ]  # fmt: skip
    cw = rows[2]
    assert (cw.steps, cw.search_steps, cw.lr, cw.initial_const, cw.confidence) == (1000, 5, 5e-3, 1e-2, 0.0)
    assert all(r.step_size == 0.01 for r in rows if r.attack == "pgd")
    assert all((r.lr, r.delta, r.samples) == (0.01, 0.01, 128) for r in rows if r.attack == "spsa")
    assert all(r.label_mode == "pred" for r in rows)
    assert len({config_hash(r) for r in rows}) == len(rows)


def test_run_attack_is_the_function_call(trained) -> None:
    x, y = trained.x[:6], trained.y[:6]
    cfg = AttackConfig("pgd", eps=0.05, steps=3, step_size=0.02)
    via = run_attack(trained.model, x, y, cfg, seed=7)
    direct = pgd(trained.model, x, y, eps=0.05, steps=3, step_size=0.02, seed=7)
    assert torch.equal(via.x_adv, direct.x_adv)
    cfg = AttackConfig("spsa", eps=0.05, steps=2, samples=16)
    assert torch.equal(
        run_attack(trained.model, x, y, cfg, seed=1).x_adv,
        spsa(trained.model, x, y, eps=0.05, steps=2, samples=16, seed=1).x_adv,
    )


def test_no_attack_returns_the_clean_images(trained) -> None:
    x, y = trained.x[:6], trained.y[:6]
    res = run_attack(trained.model, x, y, AttackConfig("none"))
    assert torch.equal(res.x_adv, x) and not res.success.any()
    with torch.no_grad():
        assert torch.equal(res.pred, trained.model(x).argmax(1))


@pytest.mark.parametrize(
    "cfg",
    [
        AttackConfig("fgsm", eps=0.05, norm="l2"),
        AttackConfig("pgd", eps=0.5, norm="l2", steps=2),
        AttackConfig("cw_l2", steps=3, search_steps=2, warm_start=False),
        AttackConfig("spsa", eps=0.05, steps=1, samples=4, early_stop_loss=0.0),
        AttackConfig("apgd_ce", eps=0.05, steps=3, restarts=2),
        AttackConfig("pgd", eps=0.05, steps=2, targeted=True),
    ],
    ids=lambda c: c.name,
)
def test_every_config_runs(trained, cfg: AttackConfig) -> None:
    x, y = trained.x[:4], trained.y[:4]
    res = run_attack(trained.model, x, 1 - y if cfg.targeted else y, cfg, seed=2)
    assert res.x_adv.shape == x.shape and res.success.shape == (4,)
    assert res.targeted == cfg.targeted
