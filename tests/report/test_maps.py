"""Grad-CAM (one target per image, the μ path for VIB), attention maps, and the map scores."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

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


# --- ViT: Grad-CAM on the last encoder block's patch-token grid ---------------------------------

#: pytorch-grad-cam (PyPI: grad-cam) is a test extra, installed with --no-deps (requirements-refs.txt).
GRAD_CAM_REF = "parity reference not installed: pip install --no-deps -r requirements-refs.txt (grad-cam)"


def vit_reshape_transform() -> Callable[..., torch.Tensor]:
    """pytorch-grad-cam's ViT recipe, ``vit_reshape_transform(tensor, height, width)``, from
    ``pytorch_grad_cam/utils/reshape_transforms.py`` of the grad-cam package. That file alone
    is loaded (importlib.util.spec_from_file_location): the package's ``__init__`` imports cv2
    (OpenCV), which medhpc neither needs nor installs; the file itself needs only torch."""
    found = importlib.util.find_spec("pytorch_grad_cam")  # locates the package without running it
    if found is None or not found.submodule_search_locations:
        pytest.skip(GRAD_CAM_REF)
    path = Path(next(iter(found.submodule_search_locations))) / "utils" / "reshape_transforms.py"
    spec = importlib.util.spec_from_file_location("grad_cam_reshape_transforms", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.vit_reshape_transform


@pytest.fixture
def tiny_vit(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], nn.Module]:
    """A 2-block ViT (32 px, 8 px patches) through the ViT-B/16 spec's code path."""
    from medhpc.models import registry
    from medhpc.models.backbones import vit_b_16

    tiny = vit_b_16.spec("vit_tiny", image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    monkeypatch.setitem(registry.ARCHS, "vit_tiny", tiny)

    def build(head: str) -> nn.Module:
        torch.manual_seed(0)
        extra = {"vib": VIBConfig(latent=8, eval_samples=4), "freeze_backbone": True} if head == "vib" else {}
        return build_model(ModelConfig(arch="vit_tiny", head=head, **extra)).eval()

    return build


VIT_CASES = [("linear", 32), ("vib", 32), ("linear", 48)]


def _tokens_and_grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens at ``cam_layer`` (B, 1 + h*w, D) and the target logits' gradient on them."""
    tokens: list[torch.Tensor] = []

    def leaf(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        tokens.append(out.detach().requires_grad_(True))  # a frozen backbone has no graph here
        return tokens[-1]

    handle = model.cam_layer.register_forward_hook(leaf)  # type: ignore[union-attr]
    try:
        logits = model.expected_logits(x)  # type: ignore[operator]
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), tokens[0])
    return tokens[0].detach(), grads


@pytest.mark.parametrize(("head", "side"), VIT_CASES)
def test_vit_grad_cam_is_on_the_patch_grid_per_image(
    tiny_vit: Callable[[str], nn.Module], head: str, side: int
) -> None:
    """The map is on the h x w patch grid (4 x 4 at the native 32 px, 6 x 6 at 48 px), read at
    the last block's first LayerNorm (pytorch-grad-cam's ``blocks[-1].norm1``), per image, the
    VIB model's through its noise-free mu path; no attention map (that head is refused)."""
    model = tiny_vit(head)
    assert model.cam_layer is model.backbone.encoder.layers[-1].ln_1
    x = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 1])
    grid = side // 8
    cam = M.grad_cam(model, x, target)
    assert cam.shape == (3, grid, grid) and (cam >= 0).all() and (cam.flatten(1).amax(1) > 0).all()
    torch.testing.assert_close(M.grad_cam(model, x, target), cam)
    for i in range(3):
        torch.testing.assert_close(M.grad_cam(model, x[i : i + 1], target[i : i + 1])[0], cam[i], rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    maps = M.model_maps(model, x, target, batch_size=2)
    assert set(maps) == {"gradcam"}
    np.testing.assert_allclose(maps["gradcam"], cam.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("head", "side"), VIT_CASES)
def test_vit_grad_cam_equals_pytorch_grad_cams_reshape_transform(
    tiny_vit: Callable[[str], nn.Module], head: str, side: int
) -> None:
    """The model's reshape (the spec's ``cam_reshape``) is pytorch-grad-cam's
    ``vit_reshape_transform`` exactly, and the map equals Grad-CAM by hand on tokens and
    gradients laid out by that reference."""
    reference = vit_reshape_transform()
    model = tiny_vit(head)
    x = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 1])
    grid = side // 8
    acts, grads = _tokens_and_grads(model, x, target)
    assert acts.shape == (3, 1 + grid * grid, 16)
    a, g = reference(acts, height=grid, width=grid), reference(grads, height=grid, width=grid)
    assert torch.equal(model.cam_map(acts, (side, side)), a) and torch.equal(model.cam_map(grads, (side, side)), g)
    by_hand = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    torch.testing.assert_close(M.grad_cam(model, x, target), by_hand)


def test_vit_last_block_output_would_give_an_empty_map(tiny_vit: Callable[[str], nn.Module]) -> None:
    """Why the recipe reads the block's LayerNorm, not its output: only the class token reaches
    the head, so the gradient on every patch token of the last block's output is exactly 0."""
    model = tiny_vit("linear")
    out: list[torch.Tensor] = []
    handle = model.backbone.encoder.layers[-1].register_forward_hook(lambda _m, _i, o: out.append(o))
    try:
        logits = model(torch.rand(2, 3, 32, 32))
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits[:, 0].sum(), out[0])
    assert torch.count_nonzero(grads[:, 1:]) == 0 and torch.count_nonzero(grads[:, 0]) > 0
