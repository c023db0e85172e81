"""Robustness evaluation: accuracy under each attack as plain JSON-able numbers, and warning
flags when the table shows a sign of gradient masking (and none on an honest model)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from medhpc.attacks import AttackConfig, evaluate_robustness, masking_warnings
from medhpc.attacks.robustness import EXPLANATIONS
from medhpc.config import to_dict

SMALL = [
    AttackConfig("none"),
    AttackConfig("fgsm", eps=0.05),
    AttackConfig("pgd", eps=0.05, steps=10, step_size=0.0125),
    AttackConfig("pgd", eps=0.1, steps=10, step_size=0.025),
    AttackConfig("spsa", eps=0.05, steps=5, samples=32),
    AttackConfig("cw_l2", steps=40, search_steps=5),
]


def _batches(trained: Any, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(trained.x[i : i + size], trained.y[i : i + size]) for i in range(0, 32, size)]


def test_table_of_an_honest_model(trained) -> None:
    out = evaluate_robustness(trained.model, _batches(trained), SMALL, progress=False)
    json.dumps(out)  # plain types only
    rows = {r["name"]: r for r in out["attacks"]}
    assert out["n"] == 32 and all(r["n"] == 32 for r in out["attacks"])
    with torch.no_grad():
        clean = (trained.model(trained.x[:32]).argmax(1) == trained.y[:32]).float().mean().item()
    assert rows["none"]["accuracy"] == pytest.approx(clean)
    assert rows["none"]["mean_linf"] == 0 and rows["none"]["success_rate"] == 0
    assert rows["pgd-linf-eps0.05-s10"]["accuracy"] <= rows["fgsm-linf-eps0.05"]["accuracy"]
    assert rows["pgd-linf-eps0.05-s10"]["mean_linf"] <= 0.05 + 1e-6
    assert rows["cw_l2-s40"]["accuracy"] <= 0.05
    assert out["warnings"] == []
    for r in out["attacks"]:
        assert set(r) >= {"name", "hash", "config", "accuracy", "success_rate", "mean_l2", "mean_linf"}


class SaturatedLogits(nn.Module):
    """A classic masked model: logits scaled by 1e4 make the cross-entropy gradient underflow
    to exactly zero on confidently classified images (defensive-distillation style), while the
    decision, and so any gradient-free or margin-based attack, is unchanged."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1e4


def test_masked_model_is_flagged(trained) -> None:
    masked = SaturatedLogits(trained.model).eval()
    attacks = [
        AttackConfig("fgsm", eps=0.1),
        AttackConfig("pgd", eps=0.1, steps=10, step_size=0.025),
        AttackConfig("spsa", eps=0.1, steps=10, lr=0.02, samples=32),
    ]
    out = evaluate_robustness(masked, _batches(trained), attacks, progress=False)
    rows = {r["config"]["attack"]: r for r in out["attacks"]}
    assert rows["spsa"]["accuracy"] < rows["pgd"]["accuracy"]  # the mask works
    kinds = {w["kind"] for w in out["warnings"]}
    assert "black_box_beats_white_box" in kinds


def _row(attack: str, accuracy: float, success: float | None = None, **cfg: Any) -> dict[str, Any]:
    """A true-label row: success = 1 - accuracy unless given."""
    c = AttackConfig(attack, **cfg)
    success = 1.0 - accuracy if success is None else success
    return {"name": c.name, "config": to_dict(c), "accuracy": accuracy, "success_rate": success}


def test_each_masking_sign_raises_its_flag() -> None:
    rows = [
        _row("pgd", 0.30, eps=0.02, steps=5, step_size=0.01),
        _row("pgd", 0.40, eps=0.05, steps=5, step_size=0.01),  # accuracy rises with eps
        _row("fgsm", 0.10, eps=0.02),  # one step beats 5-step PGD at 0.02
        _row("spsa", 0.05, eps=0.02),  # black box beats every white box at 0.02
        _row("cw_l2", 0.20, success=0.8),  # unbounded yet 20 % accuracy
    ]
    kinds = sorted(w["kind"] for w in masking_warnings(rows))
    assert kinds == [
        "accuracy_rises_with_eps",
        "black_box_beats_white_box",
        "one_step_beats_iterative",
        "unbounded_attack_fails",
    ]
    for w in masking_warnings(rows):
        assert w["message"] and w["attacks"]


def test_every_flag_explains_its_kind_in_words() -> None:
    """Each flag carries its kind's paragraph (the report shows it beside the flag), and every
    kind the function can raise has one."""
    rows = [
        _row("pgd", 0.30, eps=0.02, steps=5, step_size=0.01),
        _row("pgd", 0.40, eps=0.05, steps=5, step_size=0.01),
        _row("fgsm", 0.10, eps=0.02),
        _row("spsa", 0.05, eps=0.02),
        _row("cw_l2", 0.20, success=0.8),
    ]
    flags = masking_warnings(rows)
    assert {w["kind"] for w in flags} == set(EXPLANATIONS)
    for w in flags:
        assert w["explanation"] == EXPLANATIONS[w["kind"]]
    for kind, text in EXPLANATIONS.items():
        assert len(text.split()) >= 30, kind  # a paragraph, not a label


def test_no_flags_on_a_consistent_table() -> None:
    rows = [
        _row("fgsm", 0.50, eps=0.02),
        _row("pgd", 0.60, eps=0.02, steps=1, step_size=0.01),  # can't reach the surface: no flag
        _row("pgd", 0.40, eps=0.02, steps=5, step_size=0.01),
        _row("pgd", 0.10, eps=0.05, steps=5, step_size=0.01),
        _row("spsa", 0.45, eps=0.02),
        _row("spsa", 0.405, eps=0.05),  # black box weaker than white box: as it should be
        _row("cw_l2", 0.0, success=1.0),
    ]
    assert masking_warnings(rows) == []
    assert masking_warnings(rows, tolerance=0.0) == []


def test_predicted_label_rows_are_judged_by_success() -> None:
    """label_mode pred: a perfect attack on a model near chance leaves ~50 % true-label
    accuracy (flipped wrong predictions become right); that is not a failing attack."""
    perfect = _row("cw_l2", 0.47, success=1.0, label_mode="pred")
    assert masking_warnings([perfect]) == []
    weak = _row("cw_l2", 0.47, success=0.4, label_mode="pred")
    assert [w["kind"] for w in masking_warnings([weak])] == ["unbounded_attack_fails"]


def test_targeted_rows_attack_the_next_class(trained) -> None:
    cfg = AttackConfig("pgd", eps=0.3, steps=10, step_size=0.075, targeted=True)
    out = evaluate_robustness(trained.model, _batches(trained), [cfg], progress=False)
    row = out["attacks"][0]
    assert row["name"] == "pgd-linf-eps0.3-s10-targeted"
    assert row["success_rate"] >= 0.9  # the other class of 2 reached
    assert row["accuracy"] <= 0.1


def test_sampling_noise_is_not_a_flag() -> None:
    """On 32 images a one-image rise is noise; a 30-point rise is a flag."""
    small = _row("spsa", 0.50, eps=0.1)
    small["n"] = 32
    noise = _row("spsa", 0.50 + 1 / 32, eps=0.5)
    noise["n"] = 32
    jump = _row("spsa", 0.80, eps=1.0)
    jump["n"] = 32
    assert masking_warnings([small, noise]) == []
    assert [w["kind"] for w in masking_warnings([small, jump])] == ["accuracy_rises_with_eps"]
