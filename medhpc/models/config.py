"""Typed model configs: architecture, head, weights and the head's own settings."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from medhpc.config import bad

Arch = Literal["resnet50", "inception_v3"]
HeadKind = Literal["linear", "vib", "attention"]


@dataclass(frozen=True)
class VIBConfig:
    """Variational Information Bottleneck head (Alemi et al. 2016; Häkkinen & Raj §5.2).

    ``kl_reduction="mean"`` averages the KL over the latent dimensions as Häkkinen's scripts
    did, so the paper's β grid means what it meant there (Alemi sums: β/latent of theirs).
    ``average`` is how the ``eval_samples`` draws combine at evaluation: mean logits (the
    scripts) or mean probabilities (Alemi). ``relu`` is the scripts' σ = softplus(ReLU(a) − 5).
    """

    latent: int = 256
    beta: float = 1e-3
    relu: bool = True
    kl_reduction: Literal["sum", "mean"] = "mean"
    eval_samples: int = 12
    average: Literal["logits", "probs"] = "logits"

    def _check(self) -> None:
        if self.latent < 1:
            raise bad("latent", f"must be a positive number of dimensions, got {self.latent}")
        if not self.beta >= 0.0:
            raise bad("beta", f"must be >= 0, got {self.beta}")
        if self.eval_samples < 1:
            raise bad("eval_samples", f"must be >= 1, got {self.eval_samples}")


@dataclass(frozen=True)
class AttentionConfig:
    """Soft attention (Datta et al. 2021, as used by Wasserman 2022).

    ``learn_gamma=False`` fixes γ = 1, as the reference Keras code effectively did.
    """

    maps: int = 16
    learn_gamma: bool = True
    dropout: float = 0.5

    def _check(self) -> None:
        if self.maps < 1:
            raise bad("maps", f"must be >= 1, got {self.maps}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1), got {self.dropout}")


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

    arch: Arch
    head: HeadKind = "linear"
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
        if self.head == "vib" and self.vib is None:
            object.__setattr__(self, "vib", VIBConfig())
        if self.head == "attention" and self.attention is None:
            object.__setattr__(self, "attention", AttentionConfig())

    def _check(self) -> None:
        if self.classes < 2:
            raise bad("classes", f"must be >= 2, got {self.classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.vib is not None and self.head != "vib":
            raise bad("vib", f"VIB settings given but head is {self.head!r}")
        if self.attention is not None and self.head != "attention":
            raise bad("attention", f"attention settings given but head is {self.head!r}")
        if not self.weights:
            raise bad("weights", "must be 'none', 'imagenet' or a file path")

    @property
    def input_size(self) -> int:
        """The architecture's native input size (224 for ResNet50, 299 for InceptionV3)."""
        return 299 if self.arch == "inception_v3" else 224

    def with_head(self, head: HeadKind) -> ModelConfig:
        return replace(self, head=head, vib=None, attention=None)
