"""The classifier every job uses: [0, 1] images -> normalise -> backbone trunk -> head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medhpc.config import ConfigError
from medhpc.errors import MedhpcError
from medhpc.models import weights
from medhpc.models.config import ModelConfig
from medhpc.models.heads import HeadOutput, VIBHead
from medhpc.models.registry import refusal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputError(MedhpcError):
    """Images the model cannot take (wrong shape, too small for the architecture)."""


@dataclass
class TrainOutput:
    """What the training loss needs: the main logits, InceptionV3's auxiliary logits in
    training mode (else None) and the VIB head's per-example KL (else None)."""

    logits: torch.Tensor
    aux_logits: torch.Tensor | None
    kl: torch.Tensor | None


class Classifier(nn.Module):
    """A backbone and one of the registered heads (linear, VIB, soft attention).

    ``model(x)`` takes images in [0, 1] (B, 3, H, W) and returns logits (B, classes): what
    attacks differentiate. In evaluation mode a VIB model averages ``eval_samples`` draws;
    :meth:`sample_logits` returns the draws themselves (uncertainty), :meth:`expected_logits`
    the noise-free mean path (Grad-CAM). A frozen backbone stays in eval mode (its BatchNorm
    statistics fixed) and without gradients, whatever ``train()`` is called with.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.normalization == "imagenet" else ((0.0,) * 3, (1.0,) * 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        arch = cfg.arch_spec
        why = refusal(arch, cfg.head_spec)  # also for a config built without from_dict's checks
        if why is not None:
            raise ConfigError(f"model: head: {why}")
        self.backbone = arch.build(cfg.classes, arch.aux_logits and cfg.aux_logits and not cfg.freeze_backbone)
        path = weights.resolve(cfg.arch, cfg.weights)
        if path is not None:
            weights.load_backbone(self.backbone, path, cfg.arch)
        self.head: nn.Module = cfg.head_spec.build(arch.channels, cfg)
        if cfg.freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.cfg.freeze_backbone:
            self.backbone.eval()
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        # Shapes only: no device synchronisation.
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        arch = self.cfg.arch_spec
        need = arch.min_size
        if min(x.shape[-2:]) < need:
            raise InputError(
                f"{self.cfg.arch} needs images of at least {need}x{need} px, got {x.shape[-2]}x{x.shape[-1]}"
            )
        if x.shape[-2] % arch.size_multiple or x.shape[-1] % arch.size_multiple:
            raise InputError(
                f"{self.cfg.arch} needs image sides that are a multiple of {arch.size_multiple} px (its patch size), "
                f"got {x.shape[-2]}x{x.shape[-1]}: resize the images (data.image_size, the sweep's image_size)"
            )

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalise [0, 1] images and run the trunk: (feature map, auxiliary logits or None)."""
        self._check_input(x)
        return self.backbone((x - self.mean) / self.std)

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        t, aux = self.features(x)
        out: HeadOutput = self.head(t)
        return TrainOutput(out.logits, aux, out.kl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[0]).logits

    def sample_logits(self, x: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """Per-draw logits (S, B, classes); S = 1 for a deterministic head."""
        t = self.features(x)[0]
        if isinstance(self.head, VIBHead):
            out = self.head(t, samples)
            assert out.samples is not None
            return out.samples
        return self.head(t).logits.unsqueeze(0)

    def logits_and_draws(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction's logits (B, classes), exactly as :meth:`forward` computes them, and the
        per-draw logits (S, B, classes) it combined, from one pass (S = 1 for a deterministic head).

        An attack on an uncertainty detector needs both at the same point and draw: the
        classification loss on the first, the detector's score on the second.
        """
        out: HeadOutput = self.head(self.features(x)[0])
        draws = out.samples if out.samples is not None else out.logits.unsqueeze(0)
        return out.logits, draws

    def expected_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free logits (the VIB head's mu path); the plain logits for other heads."""
        t = self.features(x)[0]
        if isinstance(self.head, VIBHead):
            return self.head.expected_logits(t)
        return self.head(t).logits

    @property
    def cam_layer(self) -> nn.Module:
        """The layer Grad-CAM reads: ResNet50 ``layer4[-1]``, InceptionV3 ``Mixed_7c``, ViT-B/16
        the last encoder block's first LayerNorm (``encoder.layers[-1].ln_1``)."""
        return self.cfg.arch_spec.cam_module(self.backbone)

    def cam_map(self, acts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The output of :attr:`cam_layer` (or its gradient) as the (B, C, h, w) map Grad-CAM
        weighs, for an input of sides ``size``: a CNN's map as it is, a ViT's patch tokens on
        their grid (the spec's ``cam_reshape``)."""
        reshape = self.cfg.arch_spec.cam_reshape
        return acts if reshape is None else reshape(acts, size)


def build_model(cfg: ModelConfig) -> Classifier:
    """Build the classifier a config describes (weights loaded, backbone frozen if asked)."""
    return Classifier(cfg)
