"""The attacks medhpc knows, by name: each module's :class:`~medhpc.attacks.spec.AttackSpec`.

Adding an attack is a new module that defines its function and ``SPEC``, plus its line below.
"""

from __future__ import annotations

from medhpc.attacks import adaptive, apgd, cw, fab, fgsm, none, pgd, spsa, square, worst_case
from medhpc.attacks.spec import AttackSpec

#: Registration order is the order configs, tables and error messages list attacks in.
ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        none.SPEC,
        fgsm.SPEC,
        pgd.SPEC,
        cw.SPEC,
        spsa.SPEC,
        apgd.SPEC,
        apgd.SPEC_APGD,
        fab.SPEC,
        square.SPEC,
        worst_case.SPEC,
        adaptive.SPEC,
    )
}


def get_attack(name: str) -> AttackSpec:
    """The spec of attack ``name``; a ValueError listing the known ones otherwise."""
    spec = ATTACKS.get(name)
    if spec is None:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    return spec


def attack_names() -> tuple[str, ...]:
    return tuple(ATTACKS)
