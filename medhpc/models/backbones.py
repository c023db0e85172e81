"""Backbones as trunks: images (normalised) -> last feature map, keeping torchvision's names.

Module names stay torchvision's (``layer4``, ``Mixed_7c``, ``AuxLogits``) so ImageNet state
dicts load unchanged and Grad-CAM can name its layer as the papers do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# The two backbones' final feature channels, smallest accepted input sides (InceptionV3's
# unpadded convolutions need 75 px), and the layer Grad-CAM uses.
CHANNELS = {"resnet50": 2048, "inception_v3": 2048}
MIN_SIZE = {"resnet50": 32, "inception_v3": 75}
CAM_LAYER = {"resnet50": "layer4", "inception_v3": "Mixed_7c"}


class ResNet50Trunk(nn.Module):
    """torchvision's ResNet50 without ``avgpool`` and ``fc``: (B,3,H,W) -> (B,2048,H/32,W/32)."""

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x, None


class InceptionV3Trunk(nn.Module):
    """torchvision's InceptionV3 up to ``Mixed_7c``, with its auxiliary classifier in training.

    Returns the Mixed_7c map (B, 2048, 8, 8 at 299 px) and, in training mode with ``aux``,
    the auxiliary logits computed from Mixed_6e (None otherwise). torchvision's auxiliary
    classifier needs the 17x17 Mixed_6e map of a 299 px input; on smaller inputs (tests,
    low-resolution sweeps) its 5x5/3 pooling becomes an adaptive pooling to the same 5x5.
    """

    NAMES = (
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
        "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
        "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    )  # fmt: skip

    def __init__(self, classes: int, aux: bool) -> None:
        super().__init__()
        # transform_input=False: normalisation happens in the classifier, once, for every arch.
        net = torchvision.models.inception_v3(
            weights=None, aux_logits=aux, transform_input=False, init_weights=True, num_classes=classes
        )
        for name in (*self.NAMES, "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            self.add_module(name, getattr(net, name))
        self.AuxLogits = net.AuxLogits if aux else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        for name in self.NAMES:
            x = getattr(self, name)(x)
        aux = self._aux(x) if self.AuxLogits is not None and self.training else None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return x, aux

    def _aux(self, x: torch.Tensor) -> torch.Tensor:
        head = self.AuxLogits
        if min(x.shape[-2:]) >= 17:
            return head(x)
        x = head.conv1(head.conv0(F.adaptive_avg_pool2d(x, 5)))
        return head.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_trunk(arch: str, classes: int, aux: bool) -> nn.Module:
    if arch == "resnet50":
        return ResNet50Trunk()
    if arch == "inception_v3":
        return InceptionV3Trunk(classes, aux)
    raise ValueError(f"unknown architecture {arch!r}; known: resnet50, inception_v3")
