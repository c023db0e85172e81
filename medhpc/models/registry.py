"""The architectures and heads medhpc knows, by name.

Adding one is a new module under ``backbones/`` or ``heads/`` that defines it and its ``SPEC``,
plus its line below (a head with settings also gets its section on
:class:`~medhpc.models.config.ModelConfig` and the sweep's model grid; see CONTRIBUTING.md).
"""

from __future__ import annotations

from medhpc.models.backbones import inception_v3, resnet50, vit_b_16
from medhpc.models.heads import attention, linear, vib
from medhpc.models.spec import ArchSpec, HeadSpec

ARCHS: dict[str, ArchSpec] = {spec.name: spec for spec in (resnet50.SPEC, inception_v3.SPEC, vit_b_16.SPEC)}
#: Registration order is the order tables list a group's models in (base model first).
HEADS: dict[str, HeadSpec] = {spec.name: spec for spec in (linear.SPEC, attention.SPEC, vib.SPEC)}


def get_arch(name: str) -> ArchSpec:
    """The spec of architecture ``name``; a ValueError listing the known ones otherwise."""
    spec = ARCHS.get(name)
    if spec is None:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHS)}")
    return spec


def get_head(name: str) -> HeadSpec:
    """The spec of head ``name``; a ValueError listing the known ones otherwise."""
    spec = HEADS.get(name)
    if spec is None:
        raise ValueError(f"unknown head {name!r}; known: {', '.join(HEADS)}")
    return spec


def refusal(arch: ArchSpec, head: HeadSpec) -> str | None:
    """Why ``head`` cannot sit on ``arch`` (a spatial head on a token model), or None if it can."""
    if head.needs_map and not arch.feature_map:
        fits = ", ".join(repr(h.name) for h in HEADS.values() if not h.needs_map)
        return (
            f"the {head.title} head needs a convolutional feature map (B, C, H, W); {arch.name} has none "
            f"(its trunk gives the class token, (B, {arch.channels}, 1, 1)): use {fits}"
        )
    return None


def base_head() -> HeadSpec:
    """The plain head (the reference model, whose backbone ``on_base`` heads train on)."""
    return next(spec for spec in HEADS.values() if spec.base)
