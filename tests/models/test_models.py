"""Models: every architecture x head builds, runs forward/backward on [0, 1] images, and keeps
the properties the papers and the attacks rely on."""

from __future__ import annotations

import pytest
import torch

from medhpc import _ext
from medhpc.config import ConfigError, from_dict
from medhpc.models import (
    Classifier,
    InputError,
    ModelConfig,
    SoftAttentionHead,
    VIBHead,
    build_model,
    fixed_noise,
    is_stochastic,
)
from medhpc.ops import reference

SIZES = {"resnet50": 32, "inception_v3": 75}
ARCHS = ("resnet50", "inception_v3")
HEADS = ("linear", "vib", "attention")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", HEADS)
def test_every_arch_and_head_runs_forward_and_backward(arch: str, head: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, head=head))
    size = SIZES[arch]
    x = torch.rand(2, 3, size, size, requires_grad=True)
    y = torch.tensor([0, 1])
    model.train()
    out = model.forward_train(x)
    assert out.logits.shape == (2, 2)
    assert (out.aux_logits is not None) == (arch == "inception_v3")
    assert (out.kl is not None) == (head == "vib")
    loss = torch.nn.functional.cross_entropy(out.logits, y)
    if out.aux_logits is not None:
        loss = loss + 0.4 * torch.nn.functional.cross_entropy(out.aux_logits, y)
    if out.kl is not None:
        loss = loss + 1e-3 * out.kl.mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # The auxiliary classifier and every head parameter receive gradients.
    assert missing == []
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_attention_head_adds_1_2_to_1_3_percent_to_resnet50() -> None:
    base = n_params(build_model(ModelConfig(arch="resnet50", head="linear")))
    attentive = n_params(build_model(ModelConfig(arch="resnet50", head="attention")))
    gain = (attentive - base) / base
    assert 0.012 <= gain <= 0.013, gain
    # Wasserman's count: a 3x3 conv 2048 -> 16, gamma, and a linear 4096 -> 2 instead of 2048 -> 2.
    assert attentive - base == (2048 * 16 * 9 + 16) + 1 + (4096 * 2 + 2) - (2048 * 2 + 2)


def test_attention_maps_are_softmax_normalised_and_gamma_learnable() -> None:
    model = build_model(ModelConfig(arch="resnet50", head="attention"))
    assert isinstance(model.head, SoftAttentionHead)
    t = torch.randn(3, 2048, 7, 7)
    maps = model.head.maps(t)
    assert maps.shape == (3, 16, 7, 7)
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(3, 16))
    assert model.head.gamma.requires_grad
    fixed = build_model(
        from_dict(ModelConfig, {"arch": "resnet50", "head": "attention", "attention": {"learn_gamma": False}})
    )
    assert "head.gamma" not in dict(fixed.named_parameters())


def test_models_normalise_inside() -> None:
    """Inputs are [0, 1] pixels; the ImageNet normalisation is the model's first step."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet50")).eval()
    raw = build_model(ModelConfig(arch="resnet50", normalization="none")).eval()
    raw.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), raw((x - mean) / std))
    assert "mean" not in model.state_dict()  # constants, not weights


def test_too_small_or_misshaped_images_are_named() -> None:
    model = build_model(ModelConfig(arch="inception_v3")).eval()
    with pytest.raises(InputError, match="at least 75x75"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 80, 80))


def test_frozen_backbone_has_no_gradients_and_fixed_batchnorm() -> None:
    model = build_model(ModelConfig(arch="resnet50", head="vib", freeze_backbone=True))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.train()
    assert not model.backbone.training and model.head.training
    out = model.forward_train(torch.rand(4, 3, 32, 32))
    (out.logits.sum() + out.kl.sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched


def test_inception_has_no_aux_logits_when_frozen_or_disabled() -> None:
    for cfg in (
        ModelConfig(arch="inception_v3", freeze_backbone=True, weights="none"),
        ModelConfig(arch="inception_v3", aux_logits=False),
    ):
        model = build_model(cfg).train()
        assert model.forward_train(torch.rand(2, 3, 75, 75)).aux_logits is None


def test_cam_layer_is_the_papers_layer() -> None:
    r = build_model(ModelConfig(arch="resnet50"))
    i = build_model(ModelConfig(arch="inception_v3"))
    assert r.cam_layer is r.backbone.layer4[-1]
    assert i.cam_layer is i.backbone.Mixed_7c


# --- the VIB head ------------------------------------------------------------------------


def vib_model(**vib: object) -> Classifier:
    torch.manual_seed(0)
    return build_model(from_dict(ModelConfig, {"arch": "resnet50", "head": "vib", "vib": vib}))


def test_vib_trains_on_one_sample_and_evaluates_on_s() -> None:
    model = vib_model(eval_samples=5, latent=16)
    x = torch.rand(3, 3, 32, 32)
    t = model.features(x)[0]
    model.train()
    out = model.head(t)
    assert out.samples.shape == (1, 3, 2)
    model.eval()
    out = model.head(t)
    assert out.samples.shape == (5, 3, 2)
    torch.testing.assert_close(out.logits, out.samples.mean(0))
    assert model.sample_logits(x).shape == (5, 3, 2)
    assert model.sample_logits(x, samples=7).shape == (7, 3, 2)


def test_vib_probability_averaging() -> None:
    model = vib_model(eval_samples=4, latent=8, average="probs").eval()
    t = model.features(torch.rand(2, 3, 32, 32))[0]
    out = model.head(t)
    torch.testing.assert_close(out.logits.softmax(-1), out.samples.softmax(-1).mean(0))


def test_vib_sampling_matches_the_reference_with_kl_reduction() -> None:
    """The head's draw equals the executable specification for the seed it used."""
    for reduction in ("sum", "mean"):
        model = vib_model(latent=12, kl_reduction=reduction, eval_samples=3).eval()
        head = model.head
        assert isinstance(head, VIBHead)
        t = model.features(torch.rand(2, 3, 32, 32))[0]
        with fixed_noise(model, seed=123):
            out = head(t)
            seed, _ = head.noise.next()
        mu, a = head.encode(t)
        z, kl = reference.vib_reparam(mu, a, 3, seed, 0, True, reduction == "mean")
        torch.testing.assert_close(out.samples, head.decoder(z))
        torch.testing.assert_close(out.kl, kl)


def test_vib_uses_the_compiled_op_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = torch.ops.medhpc.vib_reparam if _ext.loaded() else None
    if real is None:
        pytest.skip("compiled extension not loaded (info says so); reference path covered elsewhere")

    def spy(*args: object) -> object:
        calls.append(args)
        return real(*args)

    import medhpc.ops.vib as vib_front

    monkeypatch.setattr(vib_front.torch.ops.medhpc, "vib_reparam", spy, raising=False)
    model = vib_model(latent=8).eval()
    model(torch.rand(2, 3, 32, 32))
    assert len(calls) == 1


def test_fixed_noise_pins_one_draw_and_fresh_noise_differs() -> None:
    model = vib_model(latent=16, eval_samples=2).eval()
    assert is_stochastic(model) and not is_stochastic(build_model(ModelConfig(arch="resnet50")))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(x)
        assert not torch.equal(a, b)
        with fixed_noise(model, seed=7):
            c, d = model(x), model(x)
        with fixed_noise(model, seed=8):
            e = model(x)
    assert torch.equal(c, d) and not torch.equal(c, e)


def test_share_rows_gives_pairs_one_draw() -> None:
    """SPSA's common random numbers: rows 2i and 2i+1 see the same noise, other pairs not."""
    model = vib_model(latent=16, eval_samples=1).eval()
    x = torch.rand(1, 3, 32, 32).expand(6, -1, -1, -1)
    with torch.no_grad(), fixed_noise(model, seed=3, share_rows=2):
        out = model(x)
    torch.testing.assert_close(out[0::2], out[1::2])
    assert not torch.allclose(out[0], out[2])


def test_share_rows_samples_through_the_fused_op_with_the_old_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """VIBHead.sample with share_rows > 1 no longer falls back to the reference: it gives the
    numbers of the old hand-built index ((s * G + b // share) * K + j) through the fused op."""
    head = vib_model(latent=9, eval_samples=3).eval().head
    torch.manual_seed(1)
    mu, a = torch.randn(5, 9), torch.randn(5, 9) * 3
    old_at = reference.vib_reparam_at
    with fixed_noise(head, seed=11, share_rows=2):
        seed, share = head.noise.next()
        s, b, k = 3, 5, 9
        groups = -(-b // share)
        index = (torch.arange(s).view(s, 1, 1) * groups + (torch.arange(b) // share).view(1, b, 1)) * k + torch.arange(
            k
        ).view(1, 1, k)
        z_old, kl_old = old_at(mu, a, index, seed, 0, head.cfg.relu, head.cfg.kl_reduction == "mean")

        def no_fallback(*args: object, **kwargs: object) -> None:
            raise AssertionError("VIBHead.sample fell back to reference.vib_reparam_at")

        monkeypatch.setattr(reference, "vib_reparam_at", no_fallback)
        if _ext.has_kernel("vib_reparam", "cpu"):
            z, kl = head.sample(mu, a, 3)
            torch.testing.assert_close(z, z_old, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(kl, kl_old, rtol=1e-5, atol=1e-5)


def test_vib_head_under_cpu_autocast_returns_bfloat16_without_casting_itself() -> None:
    head = vib_model(latent=8, eval_samples=2).eval().head
    t = torch.randn(3, 2048, 1, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mu, a = head.encode(t)
        z, kl = head.sample(mu, a, 2)
    assert mu.dtype == torch.bfloat16 and z.dtype == torch.bfloat16 and kl.dtype == torch.bfloat16


def test_vib_expected_logits_are_the_mean_path() -> None:
    model = vib_model(latent=16).eval()
    x = torch.rand(2, 3, 32, 32)
    head = model.head
    mu, _ = head.encode(model.features(x)[0])
    torch.testing.assert_close(model.expected_logits(x), head.decoder(mu))
    with torch.no_grad():
        many = model.sample_logits(x, samples=4000).mean(0)
    torch.testing.assert_close(many, model.expected_logits(x).detach(), atol=0.05, rtol=0.0)


def test_vib_initialisation_is_xavier_with_zero_bias() -> None:
    head = vib_model(latent=32).head
    assert torch.count_nonzero(head.mu.bias) == 0 and torch.count_nonzero(head.a.bias) == 0
    bound = (6.0 / (2048 + 32)) ** 0.5
    assert head.mu.weight.abs().max() <= bound and head.mu.weight.abs().max() > 0.9 * bound


# --- configs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"arch": "resnet18"}, r"arch: must be one of 'resnet50', 'inception_v3', 'vit_b_16', got 'resnet18'"),
        ({"arch": "resnet50", "hed": "vib"}, r"hed: unknown key \(did you mean 'head'\?\)"),
        ({"arch": "resnet50", "head": "vib", "vib": {"beta": -1}}, r"vib\.beta: must be >= 0"),
        ({"arch": "resnet50", "head": "vib", "vib": {"eval_samples": 0}}, r"vib\.eval_samples"),
        (
            {"arch": "resnet50", "head": "linear", "vib": {"beta": 1e-3}},
            r"vib: VIB settings given but head is 'linear'",
        ),
        ({"arch": "resnet50", "classes": 1}, r"classes: must be >= 2"),
        ({"arch": "resnet50", "freeze_backbone": "yes"}, r"freeze_backbone: expected true or false"),
        ({"head": "vib"}, r"arch: missing"),
    ],
)
def test_bad_model_configs_name_the_key(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(ModelConfig, data, source="model.yaml")
