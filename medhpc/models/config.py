"""The typed model config: architecture, head, weights and the head's own settings.

Architecture and head names are checked against :mod:`medhpc.models.registry`; a head's
settings class is declared in its own module (``heads/vib.py`` holds :class:`VIBConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medhpc.config import bad
from medhpc.models.heads.attention import AttentionConfig
from medhpc.models.heads.vib import VIBConfig
from medhpc.models.registry import ARCHS, HEADS, get_arch, get_head, refusal
from medhpc.models.spec import ArchSpec, HeadSpec


@dataclass(frozen=True)
class ModelConfig:
    """A backbone with a classification head.

    ``weights``: ``"none"`` (random init, as the original scripts trained), ``"imagenet"``
    (torchvision's ImageNet weights, read from the torchvision cache, never downloaded) or the
    path of a torchvision-format state dict. ``normalization`` happens inside the model, whose
    inputs are always images in [0, 1]; ``"none"`` reproduces the scripts' raw [0, 1] inputs.
    ``vib`` / ``attention`` hold the settings of those heads and are filled with defaults when
    that head is chosen; giving them for another head is an error (they would change the hash).
    """

    arch: str
    head: str = "linear"
    classes: int = 2
    weights: str = "none"
    normalization: Literal["imagenet", "none"] = "imagenet"
    freeze_backbone: bool = False
    aux_logits: bool = True
    dropout: float = 0.0
    vib: VIBConfig | None = None
    attention: AttentionConfig | None = None

    def __post_init__(self) -> None:
        # Fill the chosen head's section so the hash and the saved config are explicit.
        spec = HEADS.get(self.head)
        if spec is not None and spec.settings is not None and getattr(self, spec.name) is None:
            object.__setattr__(self, spec.name, spec.settings())

    def _check(self) -> None:
        if self.arch not in ARCHS:
            raise bad("arch", f"must be one of {', '.join(map(repr, ARCHS))}, got {self.arch!r}")
        if self.head not in HEADS:
            raise bad("head", f"must be one of {', '.join(map(repr, HEADS))}, got {self.head!r}")
        why = refusal(ARCHS[self.arch], HEADS[self.head])
        if why is not None:
            raise bad("head", why)
        if self.classes < 2:
            raise bad("classes", f"must be >= 2, got {self.classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1), got {self.dropout}")
        for other in HEADS.values():
            if other.settings is not None and other.name != self.head and getattr(self, other.name) is not None:
                raise bad(other.name, f"{other.title} settings given but head is {self.head!r}")
        if not self.weights:
            raise bad("weights", "must be 'none', 'imagenet' or a file path")

    @property
    def arch_spec(self) -> ArchSpec:
        return get_arch(self.arch)

    @property
    def head_spec(self) -> HeadSpec:
        return get_head(self.head)

    @property
    def input_size(self) -> int:
        """The architecture's native input size (224 for ResNet50 and ViT-B/16, 299 for InceptionV3)."""
        return self.arch_spec.input_size


__all__ = ["AttentionConfig", "ModelConfig", "VIBConfig"]
