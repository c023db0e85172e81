"""Named lists of attacks (``preset:`` of an attack config, ``attack_preset:`` of a sweep).

* ``paper``: the first seed's Appendix B/C rows (:func:`medhpc.attacks.config.paper_attacks`).
* ``strong``: what a worst-case evaluation adds beside them: the per-image worst case at the
  paper's ε (0.02, L∞) over the paper's own PGD row and AutoAttack's members with their
  two-class substitutes; the Square attack as the black-box row beside the paper's SPSA, at
  SPSA's query budget; and CW-L2 with EOT for stochastic heads.
* ``adaptive``: the adaptive attack on each uncertainty detector at the paper's PGD row
  (ε 0.02 L∞, 5 steps of 0.01 per round, 5 rounds of the search over λ), with EOT 20 and,
  for entropy and mutual information, without; beside it the non-adaptive PGD row with EOT 20
  (the paper's PGD row is the one without). Mutual information and variance run only on
  stochastic heads (:func:`medhpc.sweep.graph.model_attacks`).

A preset is a function ``label_mode -> [AttackConfig]``; a new one is a function and a line
in :data:`PRESETS`. Several presets combine in the order given, a config listed twice once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from medhpc.attacks.config import AttackConfig, paper_attacks
from medhpc.attacks.detector import SCORES
from medhpc.attacks.spsa import charged_queries

LabelMode = Literal["true", "pred"]

#: The paper's ε and norm, at which the strong preset's worst case is taken.
PAPER_EPS = 0.02
#: EOT draws of the strong preset's CW-L2 (AutoAttack's for randomised defences).
STRONG_EOT = 20


def strong_members(eps: float = PAPER_EPS) -> tuple[AttackConfig, ...]:
    """The strong preset's ensemble: the paper's PGD row (5 steps of ε/2 from a random start),
    then :data:`medhpc.attacks.worst_case.DEFAULT_MEMBERS`.

    PGD comes first because it is the cheapest and because the worst case is set beside the
    paper's rows: per image it then includes the paper's strongest white-box attack (with EOT
    on stochastic heads), so it cannot miss what that row found. It matters: on a small VIB
    model (tests/attacks/test_worst_case.py) 100-step APGD left 0.59–0.61 of 64 images
    robust where 5-step PGD left 0.56.
    """
    pgd = AttackConfig("pgd", eps=eps, norm="linf", step_size=eps / 2, steps=5)
    defaults = AttackConfig("worst_case", eps=eps, norm="linf").members
    assert defaults is not None
    return (pgd, *defaults)


def paper_spsa_queries() -> int:
    """The model queries per image of the paper's SPSA row at its ε 0.02 (1 286 for 5 steps of
    128 pairs): the Square row's budget, so that the two black boxes compare at equal cost."""
    row = next(a for a in paper_attacks() if a.attack == "spsa" and a.eps == PAPER_EPS)
    assert row.steps is not None and row.samples is not None
    return charged_queries(row.steps, row.samples)


def strong_attacks(label_mode: LabelMode = "pred") -> list[AttackConfig]:
    """The worst case at ε 0.02 L∞ (:func:`strong_members`, EOT 20 on stochastic heads), Square
    at ε 0.02 with the paper's SPSA budget, and CW-L2 at CleverHans' budget with EOT 20.

    On a deterministic model EOT changes nothing: the CW row then equals the paper's CW row,
    and the sweep runs it only for stochastic heads (:func:`medhpc.sweep.graph.model_attacks`).
    """
    return [
        AttackConfig("worst_case", eps=PAPER_EPS, norm="linf", members=strong_members(), label_mode=label_mode),
        AttackConfig("square", eps=PAPER_EPS, norm="linf", queries=paper_spsa_queries(), label_mode=label_mode),
        AttackConfig("cw_l2", eot=STRONG_EOT, label_mode=label_mode),
    ]


def adaptive_attacks(label_mode: LabelMode = "pred") -> list[AttackConfig]:
    """The adaptive attack per detector score at the paper's PGD row (ε 0.02, 5 × 0.01 per
    round), EOT 20 for every score and no EOT for entropy and mutual information, and the
    non-adaptive PGD row with EOT 20 to set beside the EOT rows."""
    base = {"eps": PAPER_EPS, "norm": "linf", "step_size": PAPER_EPS / 2, "steps": 5, "label_mode": label_mode}
    rows = [AttackConfig("pgd", eot=STRONG_EOT, **base)]  # type: ignore[arg-type]
    for score in SCORES:
        for eot in (1, STRONG_EOT) if score != "variance" else (STRONG_EOT,):
            rows.append(AttackConfig("adaptive", score=score, eot=eot, **base))  # type: ignore[arg-type]
    return rows


#: The presets, by name.
PRESETS: dict[str, Callable[[LabelMode], list[AttackConfig]]] = {
    "paper": paper_attacks,
    "strong": strong_attacks,
    "adaptive": adaptive_attacks,
}

PresetName = Literal["paper", "strong", "adaptive"]


def preset_attacks(names: str | Sequence[str] | None, label_mode: LabelMode = "pred") -> list[AttackConfig]:
    """The attacks of one preset or several in order (none for None); a ValueError names an
    unknown preset."""
    if names is None:
        return []
    chosen = [names] if isinstance(names, str) else list(names)
    rows: list[AttackConfig] = []
    for name in chosen:
        if name not in PRESETS:
            raise ValueError(f"unknown attack preset {name!r}; known: {', '.join(PRESETS)}")
        rows += [a for a in PRESETS[name](label_mode) if a not in rows]
    return rows
