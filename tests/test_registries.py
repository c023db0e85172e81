"""One place per concept: attacks, architectures and heads are named only by their registries.

Outside the package that registers them, no code compares a name with a string literal
(``head == "vib"``, ``arch in ("resnet50", ...)``): it reads the spec instead, so adding an
attack, a head or an architecture does not mean hunting for those comparisons.
"""

from __future__ import annotations

import ast
from pathlib import Path

from medhpc.attacks.registry import ATTACKS
from medhpc.models.registry import ARCHS, HEADS

PACKAGE = Path(__file__).resolve().parents[1] / "medhpc"


def _literals(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _literals(elt)]
    return []


def _compared_names(path: Path, names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                found += [f"{path}:{node.lineno}: {s!r}" for s in _literals(side) if s in names]
    return found


def test_no_string_comparisons_with_registered_names_outside_their_package() -> None:
    # "none" is also every other setting's "off" value (weights, loss weighting, compression).
    rules = {
        "models": set(ARCHS) | set(HEADS),
        "attacks": set(ATTACKS) - {"none"},
    }
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        for owner, names in rules.items():
            if rel.parts[0] != owner:
                offenders += _compared_names(path, names)
    assert not offenders, "compare with the registry's spec instead:\n" + "\n".join(offenders)


def test_the_check_finds_a_comparison(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text('def f(cfg):\n    return cfg.head == "vib" or cfg.arch in ("resnet50",)\n')
    assert len(_compared_names(bad, set(ARCHS) | set(HEADS))) == 2
