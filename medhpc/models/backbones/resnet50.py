"""ResNet50 (He et al. 2016) as a trunk: torchvision's network without ``avgpool`` and ``fc``."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from medhpc.models.spec import ArchSpec


class ResNet50Trunk(nn.Module):
    """torchvision's ResNet50 without ``avgpool`` and ``fc``: (B,3,H,W) -> (B,2048,H/32,W/32)."""

    conv1: nn.Module
    bn1: nn.Module
    relu: nn.Module
    maxpool: nn.Module
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x, None


SPEC = ArchSpec(
    "resnet50",
    build=lambda classes, aux: ResNet50Trunk(),
    channels=2048,
    min_size=32,
    input_size=224,
    cam_layer="layer4",
    imagenet=lambda: torchvision.models.ResNet50_Weights.DEFAULT,
)
