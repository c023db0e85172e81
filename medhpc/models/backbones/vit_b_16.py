"""ViT-B/16 (Dosovitskiy et al. 2021) as a trunk: torchvision's ``vit_b_16`` without ``heads``.

The trunk returns the class token after the final LayerNorm as a (B, 768, 1, 1) "feature
map", so the linear and VIB heads pool it unchanged; it has no convolutional map, so the
soft-attention head is refused (``feature_map=False``). Module names stay torchvision's
(``conv_proj``, ``class_token``, ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_<i>``,
``encoder.ln``) so the ImageNet state dict loads; its classifier ``heads.*`` is skipped.

Inputs at the native 224 px run exactly torchvision's computation. Other sides (a multiple of
the patch size) get the position embedding resized bicubically to their patch grid, as DeiT
and timm fine-tune at a new resolution, so low-resolution sweeps and tests run.

Grad-CAM reads the patch tokens entering the last encoder block (its first LayerNorm,
``encoder.layers.-1.ln_1``): pytorch-grad-cam's ViT recipe (``blocks[-1].norm1``). The last
block's *output* is useless for it: only the class token reaches the head, so the gradient on
every patch token there is zero. :func:`tokens_to_grid` is the recipe's ``reshape_transform``
made explicit: drop the class token, (B, 1 + h*w, D) -> (B, D, h, w).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.vision_transformer import Encoder, VisionTransformer

from medhpc.models.spec import ArchSpec


def tokens_to_grid(tokens: torch.Tensor, size: tuple[int, int], patch: int) -> torch.Tensor:
    """Patch tokens on their grid: (B, 1 + h*w, D) -> (B, D, h, w) for an input of side lengths
    ``size`` = (H, W), h = H / patch, w = W / patch; the class token (index 0) is dropped."""
    h, w = size[0] // patch, size[1] // patch
    b, n, d = tokens.shape
    if n != 1 + h * w:
        raise ValueError(f"expected 1 + {h}x{w} tokens for a {size[0]}x{size[1]} input, got {n}")
    return tokens[:, 1:, :].reshape(b, h, w, d).permute(0, 3, 1, 2)


class ViTTrunk(nn.Module):
    """torchvision's VisionTransformer without ``heads``: (B,3,H,W) -> (B, hidden, 1, 1), the
    class token after the encoder's final LayerNorm. Built at any size (the tests' tiny one)."""

    conv_proj: nn.Conv2d
    class_token: nn.Parameter
    encoder: Encoder

    def __init__(
        self, image_size: int, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int
    ) -> None:
        super().__init__()
        net = VisionTransformer(
            image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
            hidden_dim=hidden_dim, mlp_dim=mlp_dim,
        )  # fmt: skip
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.conv_proj = net.conv_proj
        self.class_token = net.class_token
        self.encoder = net.encoder

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """The position embedding (1, 1 + h*w, D) for an h x w patch grid: torchvision's own at
        the native grid, else its patch part resized bicubically (the class token's unchanged)."""
        pos = self.encoder.pos_embedding
        side = self.image_size // self.patch_size
        if (h, w) == (side, side):
            return pos
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat((pos[:, :1], grid.flatten(2).transpose(1, 2)), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.conv_proj(x)  # (B, D, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        x = torch.cat((self.class_token.expand(x.shape[0], -1, -1), x), dim=1)
        enc = self.encoder
        x = enc.ln(enc.layers(enc.dropout(x + self.position_embedding(h, w))))
        return x[:, 0, :, None, None], None


def spec(
    name: str,
    *,
    image_size: int,
    patch_size: int,
    num_layers: int,
    num_heads: int,
    hidden_dim: int,
    mlp_dim: int,
) -> ArchSpec:
    """The spec of a ViT of these sizes (ViT-B/16 below; the tests build a tiny one)."""
    return ArchSpec(
        name,
        build=lambda classes, aux: ViTTrunk(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim),
        channels=hidden_dim,
        min_size=patch_size,
        input_size=image_size,
        cam_layer="encoder.layers.-1.ln_1",
        imagenet=lambda: torchvision.models.ViT_B_16_Weights.DEFAULT,
        feature_map=False,
        cam_reshape=partial(tokens_to_grid, patch=patch_size),
        size_multiple=patch_size,
        classifier=("heads.",),
    )


SPEC = spec("vit_b_16", image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
