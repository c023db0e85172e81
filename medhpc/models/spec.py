"""What the rest of medhpc knows about an architecture or a head: one spec each, declared in
its own module and listed once in :mod:`medhpc.models.registry` (in the spirit of
torchvision's model registry: ``register_model``/``get_model``, weights that carry their
metadata).

Training, the sweep, the attacks' shards and the report read these facts; nothing outside
``medhpc.models`` compares architecture or head names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

    from medhpc.models.config import ModelConfig


@dataclass(frozen=True)
class ArchSpec:
    """A backbone: how to build its trunk and the facts the other layers need.

    Parameters
    ----------
    name : the ``arch:`` key of a model config.
    build : ``build(classes, aux) -> trunk``; the trunk maps normalised images to
        ``(last feature map, auxiliary logits or None)`` and keeps torchvision's module names.
    channels : channels of the last feature map (what a head receives).
    min_size : the smallest input side the trunk accepts.
    input_size : the native input side (what ImageNet weights were trained at).
    cam_layer : the trunk's module Grad-CAM reads, a dotted path (``encoder.layers.-1.ln_1``;
        an integer part indexes a Sequential); its last block when it is a Sequential.
    imagenet : torchvision's weights entry (URL, file name, metadata), never downloaded.
    aux_logits : whether the trunk has an auxiliary classifier used in training.
    feature_map : whether the trunk's output is a convolutional map (B, C, H, W) that a
        spatial head (soft attention) can read; False for a token model, whose output is its
        class token as a (B, C, 1, 1) map (what the linear and VIB heads pool).
    cam_reshape : ``cam_reshape(tokens, (H, W)) -> (B, C, h, w)``: how the output of
        ``cam_layer`` becomes the map Grad-CAM weighs, given the input's side lengths (a token
        model drops its class token and lays the patch tokens on their grid); None when that
        output is a (B, C, h, w) map already.
    size_multiple : input sides must be a multiple of this (a ViT's patch size), else refused.
    classifier : state-dict prefixes of torchvision's ImageNet classifier layers, replaced by
        medhpc's heads and so skipped when ImageNet weights load.
    """

    name: str
    build: Callable[[int, bool], nn.Module]
    channels: int
    min_size: int
    input_size: int
    cam_layer: str
    imagenet: Callable[[], WeightsEnum]
    aux_logits: bool = False
    feature_map: bool = True
    cam_reshape: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None = None
    size_multiple: int = 1
    classifier: tuple[str, ...] = ("fc.",)

    def cam_module(self, trunk: nn.Module) -> nn.Module:
        """The module of ``trunk`` Grad-CAM hooks: ``cam_layer`` resolved, then the last block
        of a Sequential (ResNet50 ``layer4[-1]``, ViT ``encoder.layers[-1].ln_1``)."""
        layer = trunk
        for part in self.cam_layer.split("."):
            if part.lstrip("-").isdigit():
                assert isinstance(layer, nn.Sequential), f"{self.cam_layer}: {part} indexes a non-Sequential"
                layer = layer[int(part)]
            else:
                layer = getattr(layer, part)
        return layer[-1] if isinstance(layer, nn.Sequential) else layer


@dataclass(frozen=True)
class SweepAxis:
    """A head setting a sweep varies: the values are the sweep grid's field ``grid``, each set
    as the head settings' field ``field``; ``symbol`` labels it in tables and figures."""

    field: str
    grid: str
    symbol: str


@dataclass(frozen=True)
class HeadSpec:
    """A classification head over the last feature map.

    Parameters
    ----------
    name : the ``head:`` key of a model config; a head with ``settings`` reads them from the
        model config's section of the same name (``vib:``).
    title : its name in messages and captions (``VIB``).
    build : ``build(channels, cfg) -> head module`` returning a ``HeadOutput``.
    settings : the config class of its section, or None when it has none.
    stochastic : whether its output is random (attacks then use EOT; shards store draws).
    samples : the draws its evaluation-mode prediction averages (from its settings).
    kl_weight : the weight of the KL term its output carries in the training loss (β).
    axis : the setting a sweep varies over it (β), if any.
    base : the plain head: the reference model, whose backbone ``on_base`` heads train on.
    on_base : trains on a finished base model's frozen backbone (the VIB recipe).
    own_map : exposes a spatial map of its own (soft attention's A), drawn beside Grad-CAM.
    pooled : sees the feature map only through its global average (linear, VIB), so a frozen
        backbone's pooled features can stand in for the map (:mod:`medhpc.train.features`).
    needs_map : reads a convolutional feature map (refused on an architecture whose
        ``feature_map`` is False, a ViT's class token).
    """

    name: str
    title: str
    build: Callable[[int, ModelConfig], nn.Module]
    settings: type | None = None
    stochastic: bool = False
    samples: Callable[[Any], int] | None = None
    kl_weight: Callable[[Any], float] | None = None
    axis: SweepAxis | None = None
    base: bool = False
    on_base: bool = False
    own_map: bool = False
    pooled: bool = False
    needs_map: bool = False

    def settings_of(self, cfg: ModelConfig) -> Any:
        """This head's section of ``cfg`` (None for a head without settings)."""
        return getattr(cfg, self.name) if self.settings is not None else None

    def axis_value(self, cfg: ModelConfig) -> float | None:
        """The value of the sweep axis in ``cfg`` (β), or None for a head without one."""
        if self.axis is None:
            return None
        return getattr(self.settings_of(cfg), self.axis.field)

    def eval_samples(self, cfg: ModelConfig) -> int:
        """Draws per prediction in evaluation mode (0 for a deterministic head)."""
        return self.samples(self.settings_of(cfg)) if self.stochastic and self.samples is not None else 0

    def loss_weight(self, cfg: ModelConfig) -> float | None:
        """The weight of the KL term in the loss, or None for a head without one."""
        return None if self.kl_weight is None else self.kl_weight(self.settings_of(cfg))
