"""Training and models on CUDA: bf16 / fp16 autocast, channels_last, the CUDA VIB kernel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from medhpc.models import ModelConfig, build_model, fixed_noise
from medhpc.train import checkpoint, from_mapping, train
from medhpc.train.checkpoint import load as load_ckpt

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("head", ["linear", "vib", "attention"])
def test_training_on_cuda_with_autocast_and_channels_last(
    tiny_cache: Path, tmp_path: Path, precision: str, head: str
) -> None:
    cfg = from_mapping(
        {
            "model": {"arch": "resnet50", "head": head},
            "data": {"cache": str(tiny_cache)},
            "optim": {"name": "adam", "lr": 1e-3},
            "epochs": 2,
            "device": "cuda",
            "precision": precision,
            "out": str(tmp_path),
        }
    )
    run = train(cfg, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda")
    state = load_ckpt(run / "best.pt")["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if precision == "fp16":
        assert load_ckpt(run / "last.pt")["scaler"] is not None


def test_a_deterministic_run_resumed_on_cuda_ends_with_identical_weights(
    tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``deterministic: true``: resumed from its epoch-1 checkpoint (CPU and CUDA RNG states,
    optimiser, scaler), a run ends bit-identical to the uninterrupted one."""
    cfg = from_mapping(
        {
            "model": {"arch": "resnet50", "head": "vib", "vib": {"latent": 16}},
            "data": {"cache": str(tiny_cache)},
            "optim": {"name": "adam", "lr": 1e-3},
            "epochs": 2,
            "batch_size": 8,
            "device": "cuda",
            "deterministic": True,
            "out": str(tmp_path),
        }
    )
    written: dict[int, bytes] = {}
    save = checkpoint.save

    def keep(path: Path, **kw: Any) -> None:
        save(path, **kw)
        written[kw["progress"].epoch] = path.read_bytes()

    monkeypatch.setattr(checkpoint, "save", keep)
    run = train(cfg, progress=False)
    whole = load_ckpt(run / "last.pt")
    assert whole["runtime"] == {"device": "cuda", "precision": "bf16", "tf32": False}
    (run / "last.pt").write_bytes(written[1])  # as if killed during epoch 2
    (run / "metrics.json").unlink()
    train(cfg, progress=False)
    resumed = load_ckpt(run / "last.pt")
    assert resumed["progress"]["epoch"] == 2
    different = [k for k in whole["model"] if not torch.equal(whole["model"][k], resumed["model"][k])]
    assert different == [], different[:5]


def test_inception_trains_on_cuda_at_299(tmp_path: Path) -> None:
    model = build_model(ModelConfig(arch="inception_v3")).cuda().to(memory_format=torch.channels_last).train()
    x = torch.rand(8, 3, 299, 299, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.forward_train(x)
    assert out.aux_logits is not None and out.aux_logits.shape == (8, 2)
    (out.logits.float().sum() + out.aux_logits.float().sum()).backward()


@pytest.mark.usefixtures("no_tf32")
def test_vib_head_on_cuda_matches_cpu_for_the_same_draw() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet50", head="vib")).eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad(), fixed_noise(model, seed=11):
        cpu = model.sample_logits(x, samples=5)
    model.cuda()
    with torch.no_grad(), fixed_noise(model, seed=11):
        gpu = model.sample_logits(x.cuda(), samples=5)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["pgd", "trades", "fgsm"])
def test_adversarial_training_on_cuda_with_bf16_autocast(tiny_cache: Path, tmp_path: Path, method: str) -> None:
    """Each method crafts and steps on the GPU under bf16 autocast, and keeps a model by its
    robust validation loss (``precision: auto``, channels_last)."""
    cfg = from_mapping(
        {
            "model": {"arch": "resnet50", "head": "linear"},
            "data": {"cache": str(tiny_cache)},
            "optim": {"name": "adam", "lr": 1e-3},
            "epochs": 2,
            "device": "cuda",
            "adversarial": {"method": method, "eps": 0.03, **({} if method == "fgsm" else {"steps": 3})},
            "out": str(tmp_path),
        }
    )
    run = train(cfg, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda") and metrics["kept_by"] == "val_robust_loss"
    assert metrics["val_robust"]["n"] == metrics["val"]["n"] and metrics["val_robust"]["loss"] >= 0
    history = json.loads((run / "history.json").read_text())
    assert all(h["val_robust_loss"] is not None for h in history)
