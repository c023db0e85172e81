"""Frozen-feature training: a pooled head on a frozen backbone trains from features computed once
(``medhpc.train.features``) to the weights it reaches through the backbone."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch

from medhpc.models import build_model
from medhpc.train import from_mapping, train
from medhpc.train.checkpoint import load as load_ckpt
from medhpc.train.features import eligible, prepare


def _config(cache: Path, out: Path, head: str, feature_cache: bool, **extra: object) -> dict:
    model: dict[str, object] = {"arch": "resnet50", "head": head, "freeze_backbone": True}
    if head == "vib":
        model["vib"] = {"latent": 16, "eval_samples": 3}
    return {"model": model, "data": {"cache": str(cache)}, "optim": {"name": "adam", "lr": 1e-2}, "epochs": 2,
            "batch_size": 16, "eval_batch_size": 32, "out": str(out), "feature_cache": feature_cache,
            **extra}  # fmt: skip


@pytest.mark.parametrize("head", ["vib", "linear"])
def test_a_head_trained_on_cached_features_equals_one_trained_through_the_frozen_backbone(
    tiny_cache: Path, tmp_path: Path, head: str
) -> None:
    # the linear head with dropout: its draws come from the same stream either way
    extra = {} if head == "vib" else {"epochs": 1, "model": {"arch": "resnet50", "head": "linear",
                                                             "freeze_backbone": True, "dropout": 0.3}}  # fmt: skip
    runs = {}
    for cached in (False, True):
        data = _config(tiny_cache, tmp_path / str(cached), head, cached)
        data.update(extra)
        cfg = from_mapping(data)
        assert eligible(cfg) == cached
        runs[cached] = train(cfg, progress=False)
    files = list((tmp_path / "True" / "features").glob("*.h5"))
    assert len(files) == 1 and not (tmp_path / "False" / "features").exists()
    plain, cached_w = (load_ckpt(runs[c] / "last.pt")["model"] for c in (False, True))
    assert plain.keys() == cached_w.keys()
    for k in plain:
        torch.testing.assert_close(cached_w[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)
    hist = [json.loads((runs[c] / "history.json").read_text()) for c in (False, True)]
    for a, b in zip(*hist, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5) and a["train_loss"] == pytest.approx(
            b["train_loss"], rel=1e-5
        )


def test_the_features_are_computed_once_per_backbone_and_a_damaged_file_is_rebuilt(
    tiny_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="medhpc.train.features")
    cpu = torch.device("cpu")
    cfgs = []
    for beta in (1e-3, 1e-2):  # two heads on one backbone: one file
        data = _config(tiny_cache, tmp_path, "vib", True)
        data["model"]["vib"] = {"latent": 16, "eval_samples": 3, "beta": beta}  # type: ignore[index]
        cfgs.append(from_mapping(data))
    torch.manual_seed(0)
    model = build_model(cfgs[0].model)
    first = prepare(cfgs[0], model, cpu, None, False)
    second = prepare(cfgs[1], build_model(cfgs[1].model).requires_grad_(False), cpu, None, False)
    assert second.path != first.path  # another random backbone: another file
    again = prepare(cfgs[1], model, cpu, None, False)
    assert again.path == first.path
    assert [r.message.endswith("written") for r in caplog.records if "pooled features" in r.message] == [
        True, True, False]  # fmt: skip
    with h5py.File(first.path, "r") as h5:
        assert h5["train"]["features"].shape[1] == 2048 and h5.attrs["format"] == 1
    with h5py.File(first.path, "r+") as h5:
        h5["val"]["features"][0, 0] = float("nan")
    caplog.clear()
    rebuilt = prepare(cfgs[0], model, cpu, None, False)
    assert any("non-finite features; computing the features again" in r.message for r in caplog.records)
    for split in ("train", "val"):
        torch.testing.assert_close(torch.from_numpy(rebuilt.data[split][0]), torch.from_numpy(again.data[split][0]),
                                   equal_nan=True)  # fmt: skip
    assert not torch.from_numpy(rebuilt.data["val"][0]).isnan().any()


def test_heads_that_need_the_map_and_trainable_backbones_train_as_before(tiny_cache: Path, tmp_path: Path) -> None:
    assert not eligible(from_mapping(_config(tiny_cache, tmp_path, "attention", True)))
    data = _config(tiny_cache, tmp_path, "linear", True)
    data["model"]["freeze_backbone"] = False  # type: ignore[index]
    assert not eligible(from_mapping(data))
