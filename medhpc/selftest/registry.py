"""The self-test's checks, in the order they run: the ops first (the cheapest and the most
basic), then training, then the attacks. A new check is a function in one of these modules and
its entry in that module's ``CHECKS``."""

from __future__ import annotations

from collections.abc import Sequence

from medhpc.selftest import attacks, ops, training
from medhpc.selftest.runner import Check

CHECKS: tuple[Check, ...] = (*ops.CHECKS, *training.CHECKS, *attacks.CHECKS)


def check_names() -> tuple[str, ...]:
    return tuple(c.name for c in CHECKS)


def select(patterns: Sequence[str] | None) -> list[Check]:
    """The checks whose name contains any of ``patterns`` (all when None); an unknown pattern is
    a ValueError that lists the names."""
    if not patterns:
        return list(CHECKS)
    chosen = [c for c in CHECKS if any(p in c.name for p in patterns)]
    unknown = [p for p in patterns if not any(p in c.name for c in CHECKS)]
    if unknown:
        raise ValueError(f"no check matches {', '.join(map(repr, unknown))}; checks: {', '.join(check_names())}")
    return chosen
