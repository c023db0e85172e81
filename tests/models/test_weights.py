"""ImageNet weights come from a local file or the torchvision cache, never the network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from medhpc.models import ModelConfig, WeightsError, build_model
from medhpc.models import weights as weights_mod


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home"


def imagenet_like_state(seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-format ResNet50 state dict (1000-class fc included), as the real file is."""
    torch.manual_seed(seed)
    return torchvision.models.resnet50(weights=None).state_dict()


def test_missing_imagenet_weights_name_the_expected_file(torch_home: Path) -> None:
    with pytest.raises(WeightsError) as err:
        build_model(ModelConfig(arch="resnet50", weights="imagenet"))
    expected = torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert str(expected) in str(err.value)
    assert "never downloads" in str(err.value)


def test_imagenet_weights_load_from_the_torchvision_cache(torch_home: Path) -> None:
    state = imagenet_like_state(1)
    path = weights_mod.cached_path("resnet50")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    model = build_model(ModelConfig(arch="resnet50", weights="imagenet"))
    got = model.backbone.state_dict()
    assert torch.equal(got["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])
    assert torch.equal(got["bn1.running_var"], state["bn1.running_var"])
    assert model.head.fc.out_features == 2  # the 1000-class layer is not used


def test_weights_from_a_file_path(tmp_path: Path) -> None:
    state = imagenet_like_state(2)
    path = tmp_path / "my-resnet50.pth"
    torch.save({"state_dict": state}, path)  # the common wrapped form is accepted too
    model = build_model(ModelConfig(arch="resnet50", weights=str(path)))
    assert torch.equal(model.backbone.state_dict()["conv1.weight"], state["conv1.weight"])


def test_wrong_missing_or_corrupt_weight_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist: .*nothere.pth"):
        build_model(ModelConfig(arch="resnet50", weights=str(tmp_path / "nothere.pth")))
    wrong = tmp_path / "inception.pth"
    torch.save(torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=True).state_dict(), wrong)
    with pytest.raises(WeightsError, match="does not hold resnet50 weights"):
        build_model(ModelConfig(arch="resnet50", weights=str(wrong)))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="cannot read weights file .*corrupt.pth"):
        build_model(ModelConfig(arch="resnet50", weights=str(corrupt)))
