"""The attack registry: each attack's facts live in its spec, its defaults in its signature.

These tie together what used to be written twice (the config's default table and each
function's signature) and show that an attack is added by its module and one registration.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any

import pytest
import torch
from torch import nn

from medhpc.attacks import registry
from medhpc.attacks.common import AttackResult, begin, finish
from medhpc.attacks.config import TUNABLE, AttackConfig, AttackConfigError, _count, _nested, param, run_attack
from medhpc.attacks.robustness import masking_warnings
from medhpc.attacks.spec import COMMON, RUNTIME, AttackSpec
from medhpc.config import config_hash

EPS = {True: {"eps": 0.03}, False: {}}


@pytest.mark.parametrize("name", list(registry.ATTACKS))
def test_every_keyword_of_an_attack_is_accounted_for(name: str) -> None:
    """A keyword the config cannot set must be declared ``fixed``: a new parameter of a
    function is then either configurable or visibly not (never silently ignored)."""
    spec = registry.ATTACKS[name]
    assert spec.name == name
    keywords = set(spec.signature)
    known = set(TUNABLE) | set(COMMON) | set(RUNTIME) | set(spec.fixed) | {"eps"}
    assert keywords <= known, f"{name}: {sorted(keywords - known)} are neither config fields nor fixed"
    assert set(COMMON) <= keywords, f"{name} must take {COMMON}"
    eps = inspect.signature(spec.function).parameters.get("eps")
    assert (eps is not None and eps.default is inspect.Parameter.empty) == spec.bounded
    assert spec.takes_eot == ("eot" in keywords)


@pytest.mark.parametrize("name", list(registry.ATTACKS))
def test_config_defaults_are_the_function_defaults(name: str) -> None:
    spec = registry.ATTACKS[name]
    cfg = AttackConfig(name, **EPS[spec.bounded])
    for key, default in spec.parameters(TUNABLE).items():
        if key in spec.derived:
            # a derived value as the field holds it (the worst case's default members become configs)
            assert getattr(cfg, key) == _nested(spec.derived[key](vars(cfg))), key
        else:
            assert getattr(cfg, key) == default, key
    for key in set(TUNABLE) - set(spec.parameters(TUNABLE)):
        assert getattr(cfg, key) is None, f"{name} does not take {key}"
    called = cfg.kwargs()
    assert set(called) <= set(spec.signature)  # run_attack passes nothing the function lacks


def _toy(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, eps: float, steps: int = 3,
         norm: str = "linf", clip: Any = (0.0, 1.0), label_mode: Any = "true", targeted: bool = False, seed: int = 0,
         generator: torch.Generator | None = None) -> AttackResult:  # fmt: skip
    """Moves every pixel by +ε: enough to show the registry, not an attack worth running."""
    s = begin(TOY, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed,
              generator=generator, eps=eps, norm=norm)  # fmt: skip
    assert s.eps is not None
    return finish(model, s.x, (s.x + s.eps).clamp(*s.box), s.labels, targeted, s.seed)


TOY = AttackSpec("toy", _toy, bounded=True, white_box=False, iterative=True)


def test_a_new_attack_is_its_module_and_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ATTACKS, "toy", TOY)
    cfg = AttackConfig("toy", eps=0.1)
    assert (cfg.steps, cfg.norm, cfg.name) == (3, "linf", "toy-linf-eps0.1-s3")  # defaults from the signature
    with pytest.raises(AttackConfigError, match="samples: not a parameter of 'toy'"):
        AttackConfig("toy", eps=0.1, samples=4)
    with pytest.raises(AttackConfigError, match="eps: required by 'toy'"):
        AttackConfig("toy")
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    x = torch.rand(5, 3, 2, 2) * 0.8
    res = run_attack(model, x, torch.zeros(5, dtype=torch.long), cfg)
    assert torch.allclose(res.x_adv, x + 0.1) and res.linf.max() <= 0.1 + 1e-6
    # The masking rules read the spec: a black-box row far stronger than PGD is flagged.
    rows = [
        {"name": "toy", "config": {"attack": "toy", "eps": 0.1, "norm": "linf"}, "success_rate": 0.99, "n": 1000},
        {"name": "pgd", "config": {"attack": "pgd", "eps": 0.1, "norm": "linf", "steps": 10, "step_size": 0.025},
         "success_rate": 0.5, "n": 1000},
    ]  # fmt: skip
    assert [w["kind"] for w in masking_warnings(rows)] == ["black_box_beats_white_box"]
    assert config_hash(cfg) != config_hash(AttackConfig("toy", eps=0.2))


def test_unknown_attack_lists_the_registered_ones() -> None:
    with pytest.raises(
        AttackConfigError, match="attack: must be one of 'none', 'fgsm', 'pgd', 'cw_l2', 'spsa', 'apgd_ce'"
    ):
        AttackConfig("deepfool")
    with pytest.raises(ValueError, match="unknown attack 'deepfool'"):
        registry.get_attack("deepfool")


def test_a_parameter_added_later_keeps_every_existing_hash() -> None:
    """What ``param(check, added_later=True)`` is for: AttackConfig grows a field, old hashes stay."""

    @dataclass(frozen=True)
    class Before:
        attack: str
        steps: int | None = param(_count)

    @dataclass(frozen=True)
    class After:
        attack: str
        steps: int | None = param(_count)
        queries: int | None = param(_count, added_later=True)

    assert config_hash(After("pgd", 5)) == config_hash(Before("pgd", 5))
    assert config_hash(After("square", 5, queries=100)) != config_hash(Before("square", 5))
    queries = next(f for f in fields(After) if f.name == "queries")
    assert queries.metadata["check"](0) == "must be an integer >= 1"  # still a checked, tunable parameter
