"""Grad-CAM (one target per image, the μ path for VIB), attention maps, and the map scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medhpc.models import ModelConfig, build_model
from medhpc.models.config import AttentionConfig, VIBConfig
from medhpc.report import maps as M


class Toy(nn.Module):
    """logits_c = sum_k w_ck mean(A_k) with A = the input itself: Grad-CAM by hand is
    alpha_k = w_ck / (h w), map = ReLU(sum_k alpha_k A_k)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.cam_layer = nn.Identity()
        self.w = w

    def expected_logits(self, x: torch.Tensor) -> torch.Tensor:
        a = self.cam_layer(x)
        return a.mean((2, 3)) @ self.w.T


def test_grad_cam_equals_the_hand_formula_with_a_target_per_image() -> None:
    torch.manual_seed(0)
    w = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0]])  # 2 classes x 3 channels
    x = torch.randn(4, 3, 5, 6)
    target = torch.tensor([0, 1, 1, 0])
    cam = M.grad_cam(Toy(w), x, target)
    hand = torch.relu(torch.einsum("bk,bkhw->bhw", w[target] / 30, x))
    torch.testing.assert_close(cam, hand)
    # a batch gives each image's own map: not the first image's target for all
    for i in range(4):
        torch.testing.assert_close(M.grad_cam(Toy(w), x[i : i + 1], target[i : i + 1])[0], cam[i])
    assert not torch.allclose(cam[1], M.grad_cam(Toy(w), x[1:2], torch.tensor([0]))[0])
    with pytest.raises(ValueError, match="one target per image"):
        M.grad_cam(Toy(w), x, torch.tensor([0]))


def _model(head: str) -> nn.Module:
    extra = {"vib": VIBConfig(latent=8, eval_samples=4)} if head == "vib" else {}
    if head == "attention":
        extra = {"attention": AttentionConfig()}
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="resnet50", head=head, freeze_backbone=head == "vib", **extra)).eval()


@pytest.mark.parametrize("head", ["linear", "vib", "attention"])
def test_grad_cam_on_resnet50_layer4_per_image_and_noise_free(head: str) -> None:
    model = _model(head)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 0])
    cam = M.grad_cam(model, x, target)
    assert cam.shape == (3, 2, 2) and (cam >= 0).all()  # layer4 of a 64 px image: 2 x 2
    torch.testing.assert_close(M.grad_cam(model, x, target), cam)  # the VIB mu path draws no noise
    for i in range(3):
        torch.testing.assert_close(M.grad_cam(model, x[i : i + 1], target[i : i + 1])[0], cam[i], rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients computed
    maps = M.model_maps(model, x, target, batch_size=2)
    assert set(maps) == ({"gradcam", "attention"} if head == "attention" else {"gradcam"})
    np.testing.assert_allclose(maps["gradcam"], cam.numpy(), rtol=1e-4, atol=1e-6)
    if head == "attention":
        a = maps["attention"]
        assert a.shape == (3, 2, 2)
        # A sums the K = 16 softmax maps: each sums to 1 over positions
        np.testing.assert_allclose(a.sum((1, 2)), 16.0, rtol=1e-5)


def test_upsample_scales_each_map_to_unit_range() -> None:
    m = np.array([[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, 5.0]]])
    up = M.upsample(m, 8)
    assert up.shape == (2, 8, 8)
    assert up[0].min() == 0.0 and up[0].max() == 1.0
    assert (up[1] == 0).all()  # a flat map carries no location


def test_pointing_game_by_hand() -> None:
    maps = np.zeros((3, 4, 4))
    maps[0, 1, 2] = 1  # on the lesion
    maps[1, 3, 3] = 1  # off it
    masks = np.zeros((3, 4, 4), bool)
    masks[0, 1, 2] = masks[1, 0, 0] = True  # image 2: no lesion
    pg = M.pointing_game(maps, masks)
    assert pg[0] == 1.0 and pg[1] == 0.0 and np.isnan(pg[2])
    assert M.score(maps, masks, 2)["pointing_game"] == 0.5 and M.score(maps, masks, 2)["n_lesion"] == 2
    assert M.score(maps, None, 2) == {"pointing_game": None, "top_cell_iou": None, "n_lesion": 0}


def test_top_cell_iou_by_hand() -> None:
    # 4 x 4 image, 2 x 2 grid: cells TL, TR, BL, BR
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 3, 3] = True  # lesion in TL and BR: k = 2
    masks[1, 0, 3] = True  # TR only: k = 1
    maps = np.zeros((2, 4, 4))
    maps[0, :2, :2] = 1.0  # TL
    maps[0, :2, 2:] = 0.5  # TR second: top-2 = {TL, TR} vs {TL, BR}: IoU 1/3
    maps[1, :2, 2:] = 1.0  # TR: IoU 1
    np.testing.assert_allclose(M.top_cell_iou(maps, masks, 2), [1 / 3, 1.0])
    assert np.isnan(M.top_cell_iou(maps[:1], np.zeros((1, 4, 4), bool), 2)[0])


def test_shift_correlation_and_abs_diff() -> None:
    a = np.array([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    b = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    s = M.shift(a, b)
    assert s["correlation"][0] == pytest.approx(-1.0) and np.isnan(s["correlation"][1])
    np.testing.assert_allclose(s["abs_diff"], [1.0, 0.5])
    assert M.compare(a, a) == {"correlation": pytest.approx(1.0), "abs_diff": 0.0}
