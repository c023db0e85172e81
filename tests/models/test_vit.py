"""ViT-B/16 as the third architecture, proven on a tiny VisionTransformer built through the same
code path (``vit_b_16.spec`` at small sizes, registered as ``vit_tiny``): it is torchvision's
network without its head, loads a local weights file, is refused the soft-attention head,
trains a few steps on the synthetic data and is attacked by every registered attack."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from medhpc.attacks import ATTACKS, calibrate, run_attack
from medhpc.config import ConfigError, from_dict
from medhpc.data import make_synthetic, prepare
from medhpc.models import InputError, ModelConfig, WeightsError, build_model, is_stochastic, load_model, registry
from medhpc.models import weights as weights_mod
from medhpc.models.backbones import vit_b_16
from medhpc.models.heads import LinearHead, VIBHead
from medhpc.selftest.attacks import EPS, attack_config
from medhpc.selftest.runner import CPU_SCALE, Context
from medhpc.train import from_mapping, train

#: A 2-block, 32-wide ViT on 32 px images, 8 px patches: a 4 x 4 token grid.
TINY = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``vit_tiny`` registered beside the real architectures for the test."""
    monkeypatch.setitem(registry.ARCHS, "vit_tiny", vit_b_16.spec("vit_tiny", **TINY))
    yield "vit_tiny"


def torchvision_vit(seed: int, classes: int = 1000) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(**TINY, num_classes=classes)


def test_vit_b_16_spec_facts() -> None:
    spec = registry.get_arch("vit_b_16")
    assert (spec.channels, spec.input_size, spec.min_size, spec.size_multiple) == (768, 224, 16, 16)
    assert not spec.feature_map and spec.cam_reshape is not None and spec.classifier == ("heads.",)
    weights = spec.imagenet()
    assert weights.url.endswith("/vit_b_16-c867db91.pth")
    # the classifier normalises with ImageNet's statistics: those the weights were trained with
    assert tuple(weights.transforms().mean) == (0.485, 0.456, 0.406)
    assert tuple(weights.transforms().std) == (0.229, 0.224, 0.225)
    # ImageNet weights only from the cache: the file torchvision would have cached is named
    with pytest.raises(WeightsError, match="vit_b_16-c867db91.pth.*never downloads"):
        weights_mod.resolve("vit_b_16", "imagenet")


def test_the_trunk_is_torchvisions_vit_without_its_head(tiny: str) -> None:
    """At the native size the trunk's class token is torchvision's forward with heads removed;
    at another multiple of the patch the position embedding is resized to the new grid."""
    net = torchvision_vit(0).eval()
    trunk = registry.get_arch(tiny).build(2, False).eval()
    assert set(trunk.state_dict()) == {k for k in net.state_dict() if not k.startswith("heads.")}
    trunk.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("heads.")})
    net.heads = nn.Identity()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fmap, aux = trunk(x)
        assert fmap.shape == (3, 32, 1, 1) and aux is None
        torch.testing.assert_close(fmap.flatten(1), net(x))
        assert trunk.position_embedding(4, 4) is trunk.encoder.pos_embedding
        assert trunk.position_embedding(6, 2).shape == (1, 1 + 12, 32)
        assert trunk(torch.randn(2, 3, 48, 16))[0].shape == (2, 32, 1, 1)


def test_sizes_are_checked_against_the_patch(tiny: str) -> None:
    model = build_model(ModelConfig(arch=tiny)).eval()
    with pytest.raises(InputError, match="at least 8x8"):
        model(torch.rand(1, 3, 4, 4))
    with pytest.raises(InputError, match="multiple of 8 px"):
        model(torch.rand(1, 3, 36, 32))
    assert model(torch.rand(1, 3, 40, 24)).shape == (1, 2)


def test_weights_load_from_a_local_file_and_round_trip(tiny: str, tmp_path: Path) -> None:
    """A torchvision-format file (its 1000-class ``heads`` included, as ImageNet's is) loads
    through ``weights: <path>``; the trunk's own state dict saved and loaded gives the same model."""
    state = torchvision_vit(1).state_dict()
    path = tmp_path / "vit-tiny-imagenet.pth"
    torch.save(state, path)
    model = build_model(ModelConfig(arch=tiny, weights=str(path))).eval()
    got = model.backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if not k.startswith("heads."))
    assert model.head.fc.out_features == 2
    own = tmp_path / "own.pth"
    torch.save(model.backbone.state_dict(), own)
    again = build_model(ModelConfig(arch=tiny, weights=str(own))).eval()
    again.head.load_state_dict(model.head.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    inception_like = tmp_path / "wrong.pth"
    torch.save(torchvision_vit(2, classes=10).encoder.state_dict(), inception_like)
    with pytest.raises(WeightsError, match="does not hold vit_tiny weights"):
        build_model(ModelConfig(arch=tiny, weights=str(inception_like)))


def test_linear_and_vib_read_the_class_token_and_attention_is_refused(tiny: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    linear = build_model(ModelConfig(arch=tiny)).eval()
    assert isinstance(linear.head, LinearHead)
    with torch.no_grad():
        token = linear.features(x)[0]
        torch.testing.assert_close(linear(x), linear.head.fc(token.flatten(1)))
    vib = build_model(ModelConfig(arch=tiny, head="vib", freeze_backbone=True)).eval()
    assert isinstance(vib.head, VIBHead) and vib.head.mu.in_features == 32
    assert vib.sample_logits(x).shape == (12, 2, 2)
    message = r"attention head needs a convolutional feature map .* vit_tiny has none .*token.*use 'linear', 'vib'"
    with pytest.raises(ConfigError, match=r"model\.yaml: head: the " + message):
        from_dict(ModelConfig, {"arch": tiny, "head": "attention"}, source="model.yaml")
    with pytest.raises(ConfigError, match=message):  # a config built directly is refused too
        build_model(ModelConfig(arch=tiny, head="attention"))
    with pytest.raises(ConfigError, match="vit_b_16 has none"):
        from_dict(ModelConfig, {"arch": "vit_b_16", "head": "attention"})
    assert registry.refusal(registry.get_arch("resnet50"), registry.get_head("attention")) is None


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vit-data")
    make_synthetic("aptos", root / "aptos", n=48, size=32, seed=0)
    out = root / "aptos-32.h5"
    prepare("aptos", root / "aptos", out, size=32, seed=0, progress=False)
    return out


def test_vit_trains_on_synthetic_data_and_every_attack_stays_in_the_ball(
    tiny: str, synthetic_cache: Path, tmp_path: Path
) -> None:
    """Two epochs of the tiny ViT (linear head), then a VIB head on its frozen backbone; each
    kept model is attacked by every registered attack (the selftest's cut budgets, EOT on VIB,
    the adaptive attack with a detector fitted on fresh images): results inside [0, 1] and the
    eps-ball, the same images and labels back."""
    base = {"data": {"cache": str(synthetic_cache)}, "epochs": 2, "batch_size": 8, "out": str(tmp_path)}
    first = from_mapping({**base, "model": {"arch": tiny}, "optim": {"name": "adam", "lr": 1e-3}})
    run = train(first, progress=False)
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and all(h["train_loss"] > 0 for h in history)
    model, _ = load_model(run)
    fresh = build_model(ModelConfig(arch=tiny))
    moved = [k for k, v in fresh.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert "backbone.encoder.pos_embedding" in moved and "head.fc.weight" in moved
    vib = {"arch": tiny, "head": "vib", "freeze_backbone": True, "vib": {"latent": 8, "eval_samples": 3}}
    vib_cfg = from_mapping({**base, "model": vib, "optim": {"name": "adam", "lr": 1e-3}, "init_from": str(run)})
    vib_model, _ = load_model(train(vib_cfg, progress=False))
    torch.testing.assert_close(vib_model.backbone.state_dict(), model.backbone.state_dict())

    ctx = Context(torch.device("cpu"), dataclasses.replace(CPU_SCALE, spsa_samples=4), tmp_path)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1, 0, 1])
    for m in (model, vib_model):
        stochastic = is_stochastic(m)
        for spec in ATTACKS.values():
            cfg = attack_config(spec, ctx, stochastic)
            detector = None
            if spec.calibrated:
                score = "mutual_information" if stochastic else "predictive_entropy"
                cfg = dataclasses.replace(cfg, score=score)
                assert cfg.fpr is not None and cfg.target_quantile is not None
                x_val = torch.rand(x.shape, generator=g)
                detector = calibrate(m, [(x_val, y)], score=score, fpr=cfg.fpr, target_quantile=cfg.target_quantile)
            res = run_attack(m, x, y, cfg, seed=1, detector=detector)
            assert res.x_adv.shape == x.shape and ((res.x_adv >= 0) & (res.x_adv <= 1)).all(), spec.name
            assert torch.isfinite(res.x_adv).all(), spec.name
            if spec.bounded:
                assert float(res.linf.max()) <= EPS + 1e-6, (spec.name, float(res.linf.max()))
