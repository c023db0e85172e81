"""InceptionV3 (Szegedy et al. 2016) as a trunk, with its auxiliary classifier in training."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from medhpc.models.spec import ArchSpec


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

    Mixed_7a: nn.Module
    Mixed_7b: nn.Module
    Mixed_7c: nn.Module
    AuxLogits: Any

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


#: Its unpadded convolutions need at least 75 px.
SPEC = ArchSpec(
    "inception_v3",
    build=InceptionV3Trunk,
    channels=2048,
    min_size=75,
    input_size=299,
    cam_layer="Mixed_7c",
    imagenet=lambda: torchvision.models.Inception_V3_Weights.DEFAULT,
    aux_logits=True,
    classifier=("fc.", "AuxLogits.fc."),
)
