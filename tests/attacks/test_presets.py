"""Attack presets: the paper's rows, the strong preset, and lists of presets."""

from __future__ import annotations

import pytest

from medhpc.attacks import AttackConfig, paper_attacks
from medhpc.attacks.evaluate import RobustnessConfig
from medhpc.attacks.presets import PAPER_EPS, PRESETS, preset_attacks, strong_attacks
from medhpc.config import ConfigError, config_hash, from_dict


def test_the_strong_preset_is_the_worst_case_at_the_papers_eps_and_cw_with_eot() -> None:
    worst, black, cw = strong_attacks("pred")
    # the black-box row beside the paper's SPSA (5 steps of 128 pairs), at its query budget
    assert (black.attack, black.eps, black.queries) == ("square", PAPER_EPS, 1 + 5 * (2 * 128 + 1))
    facts = (worst.attack, worst.eps, worst.norm, worst.eot, worst.label_mode)
    assert facts == ("worst_case", PAPER_EPS, "linf", 20, "pred")
    assert worst.members is not None and [m.attack for m in worst.members] == ["pgd", "apgd", "apgd", "fab", "square"]
    # the paper's PGD row, then AutoAttack's members at their standard budgets
    assert worst.members[0] == AttackConfig("pgd", eps=0.02, step_size=0.01, steps=5)
    assert worst.members[1:] == AttackConfig("worst_case", eps=0.02).members
    assert (cw.attack, cw.eot, cw.steps, cw.search_steps) == ("cw_l2", 20, 1000, 5)


def test_presets_combine_in_order_without_repeats() -> None:
    both = preset_attacks(["paper", "strong"], "pred")
    assert both == paper_attacks("pred") + strong_attacks("pred")
    assert preset_attacks(["paper", "paper"]) == paper_attacks("pred")
    assert preset_attacks(None) == []
    with pytest.raises(ValueError, match="unknown attack preset 'wild'"):
        preset_attacks("wild")
    assert set(PRESETS) == {"paper", "strong", "adaptive"}


def test_an_evaluation_config_takes_one_preset_or_a_list_and_paper_keeps_its_hash() -> None:
    one = from_dict(RobustnessConfig, {"run": "r", "preset": "paper"})
    two = from_dict(RobustnessConfig, {"run": "r", "preset": ["paper", "strong"]})
    assert one.attack_list() == paper_attacks("pred")
    assert [a.attack for a in two.attack_list()][-3:] == ["worst_case", "square", "cw_l2"]
    assert config_hash(one) != config_hash(two)
    # the hash of a paper-preset config is that of the string, as before lists were allowed
    assert config_hash(one) == config_hash(RobustnessConfig(run="r", preset="paper"))
    with pytest.raises(ConfigError, match="preset"):
        from_dict(RobustnessConfig, {"run": "r", "preset": "wild"})
    with pytest.raises(ConfigError, match="preset"):
        from_dict(RobustnessConfig, {"run": "r", "preset": ["paper", "wild"]})


def test_a_listed_attack_overrides_nothing_in_a_preset() -> None:
    extra = {"attack": "fgsm", "eps": 0.05}
    cfg = from_dict(RobustnessConfig, {"run": "r", "preset": "strong", "attacks": [extra], "label_mode": "true"})
    rows = cfg.attack_list()
    assert rows[-1] == AttackConfig("fgsm", eps=0.05)
    assert all(a.label_mode == "true" for a in rows)
