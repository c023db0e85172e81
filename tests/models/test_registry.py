"""The architecture and head registries: each spec's facts are true of what it builds, and a
head is added by its module and one registration."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from medhpc.config import ConfigError, config_hash, from_dict
from medhpc.models import ModelConfig, build_model, is_stochastic, registry
from medhpc.models.classifier import IMAGENET_MEAN, IMAGENET_STD
from medhpc.models.heads import HeadOutput, SoftAttentionHead
from medhpc.models.spec import HeadSpec


@pytest.mark.parametrize("name", list(registry.ARCHS))
def test_arch_specs_are_true_of_their_trunks(name: str) -> None:
    spec = registry.get_arch(name)
    torch.manual_seed(0)
    trunk = spec.build(2, spec.aux_logits).eval()
    side = 2 * spec.min_size  # a CNN's map is more than 1 x 1 there
    with torch.no_grad():
        fmap, aux = trunk(torch.rand(1, 3, side, side))
    assert fmap.shape[1] == spec.channels and aux is None  # no auxiliary logits in eval mode
    # a token model's "map" is its class token, (B, C, 1, 1); a CNN's keeps its spatial grid
    assert (fmap.shape[-2:] == (1, 1)) == (not spec.feature_map)
    assert isinstance(spec.cam_module(trunk), nn.Module)
    assert (spec.cam_reshape is None) == spec.feature_map
    assert spec.min_size % spec.size_multiple == 0 and spec.input_size % spec.size_multiple == 0
    assert hasattr(trunk, "AuxLogits") == spec.aux_logits
    weights = spec.imagenet()
    assert weights.url.endswith(".pth") and spec.input_size in weights.transforms().crop_size
    # the classifier's normalisation is the one the ImageNet weights were trained with
    assert tuple(weights.transforms().mean) == IMAGENET_MEAN and tuple(weights.transforms().std) == IMAGENET_STD
    model = build_model(ModelConfig(arch=name))
    assert model.cfg.input_size == spec.input_size
    with pytest.raises(Exception, match=f"at least {spec.min_size}x{spec.min_size}"):
        model(torch.rand(1, 3, spec.min_size - 1, spec.min_size - 1))


@pytest.mark.parametrize("name", list(registry.HEADS))
def test_head_specs_are_true_of_their_heads(name: str) -> None:
    spec = registry.get_head(name)
    cfg = ModelConfig(arch="resnet50", head=name)
    settings = spec.settings_of(cfg)
    assert (settings is None) == (spec.settings is None)
    model = build_model(cfg)
    assert is_stochastic(model) == spec.stochastic
    assert spec.eval_samples(cfg) == (settings.eval_samples if spec.stochastic else 0)
    out = model.train().forward_train(torch.rand(2, 3, 32, 32))
    assert (out.kl is not None) == (spec.kl_weight is not None)
    if spec.axis is not None:
        swept = replace(cfg, **{name: replace(settings, **{spec.axis.field: 0.5})})
        assert spec.axis_value(swept) == 0.5 and config_hash(swept) != config_hash(cfg)
    assert spec.own_map == callable(getattr(model.head, "attention", None))
    assert spec.needs_map == isinstance(model.head, SoftAttentionHead)  # refused on a ViT (tests/models/test_vit.py)
    assert [h.name for h in registry.HEADS.values() if h.base] == [registry.base_head().name]


class _MeanHead(nn.Module):
    """Mean over channels and positions, one bias per class: a head in eleven lines."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, t: torch.Tensor) -> HeadOutput:
        return HeadOutput(t.mean(dim=(1, 2, 3))[:, None] + self.bias)


def test_a_new_head_is_its_module_and_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = HeadSpec("mean", "mean", lambda channels, cfg: _MeanHead(channels, cfg.classes))
    monkeypatch.setitem(registry.HEADS, "mean", spec)
    cfg = from_dict(ModelConfig, {"arch": "resnet50", "head": "mean"}, source="model.yaml")
    model = build_model(cfg).eval()
    assert isinstance(model.head, _MeanHead) and model(torch.rand(3, 3, 32, 32)).shape == (3, 2)
    with pytest.raises(ConfigError, match=r"model\.yaml: head: must be one of 'linear', 'attention', 'vib', 'mean'"):
        from_dict(ModelConfig, {"arch": "resnet50", "head": "max"}, source="model.yaml")


def test_unknown_names_list_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'vgg16'; known: resnet50, inception_v3, vit_b_16$"):
        registry.get_arch("vgg16")
    with pytest.raises(ValueError, match="unknown head 'mlp'; known: linear, attention, vib"):
        registry.get_head("mlp")
