"""Training configs: presets, overrides, validation that names the key and file, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from medhpc.config import ConfigError, config_hash
from medhpc.train import from_mapping, load_train_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_vib_preset_is_the_papers_recipe_and_file_keys_win(tmp_path: Path) -> None:
    cfg = load_train_config(
        write(
            tmp_path / "vib.yaml",
            "preset: vib\nmodel: {arch: resnet50, vib: {beta: 1.0e-5}}\ndata: {cache: c.h5}\nepochs: 3\n",
        )
    )
    assert cfg.model.head == "vib" and cfg.model.freeze_backbone
    assert cfg.optim.name == "adam" and cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.5, 0.999)
    assert cfg.optim.decay_gamma == 0.97 and cfg.optim.decay_every == 2
    assert cfg.batch_size == 32
    assert cfg.epochs == 3  # the file's key beats the preset's 20
    assert cfg.model.vib is not None and cfg.model.vib.beta == 1e-5


def test_base_preset_and_toml(tmp_path: Path) -> None:
    cfg = load_train_config(
        write(
            tmp_path / "base.toml",
            'preset = "base"\nloss_weighting = "weighted"\n[model]\narch = "inception_v3"\n[data]\ncache = "c.h5"\n',
        )
    )
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 1e-4 and cfg.optim.momentum == 0.9
    assert cfg.epochs == 200 and cfg.batch_size == 32 and cfg.loss_weighting == "weighted"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "model: {arch: resnet50}\ndata: {cache: c.h5}\nepoch: 3\n",
            r"bad\.yaml: epoch: unknown key \(did you mean 'epochs'\?\)",
        ),
        ("model: {arch: resnet50}\ndata: {cache: c.h5}\noptim: {lr: -1}\n", r"bad\.yaml: optim\.lr: must be > 0"),
        ("model: {arch: resnet50}\ndata: {cache: c.h5}\noptim: {betas: [0.9]}\n", r"optim\.betas: expected 2 values"),
        ("model: {arch: resnet50}\ndata: {cache: c.h5}\nbatch_size: 0\n", r"batch_size: must be >= 1"),
        ("model: {arch: resnet50}\ndata: {cache: c.h5}\nepochs: 2.5\n", r"epochs: expected an integer"),
        ("model: {arch: resnet50}\ndata: {cache: c.h5}\nloss_weighting: balanced\n", r"loss_weighting: must be one of"),
        ("model: {arch: resnet50}\ndata: {cache: c.h5}\npreset: fast\n", r"preset: must be one of 'base', 'vib'"),
        ("model: {arch: resnet50}\n", r"data: missing"),
        ("model: {arch: resnet50}\ndata: {cache: c.h5}\ndevice: gpu\n", r"device: must be 'auto'"),
        ("- just\n- a list\n", r"top level must be a mapping"),
        ("model: {arch: resnet50\n", r"not valid YAML"),
    ],
)
def test_bad_configs_name_key_and_file(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_train_config(write(tmp_path / "bad.yaml", text))


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist: .*nope.yaml"):
        load_train_config(tmp_path / "nope.yaml")


def test_hash_names_what_is_computed_not_where_or_how_fast() -> None:
    base = {"model": {"arch": "resnet50"}, "data": {"cache": "c.h5"}}
    a = from_mapping(base)
    assert config_hash(a) == config_hash(from_mapping({**base, "out": "elsewhere", "num_workers": 4, "device": "cpu"}))
    assert config_hash(a) != config_hash(from_mapping({**base, "seed": 1}))
    assert config_hash(a) != config_hash(from_mapping({**base, "optim": {"lr": 1e-3}}))
    vib = {"model": {"arch": "resnet50", "head": "vib"}, "data": {"cache": "c.h5"}}
    assert config_hash(from_mapping(vib)) != config_hash(
        from_mapping({**vib, "model": {**vib["model"], "vib": {"beta": 1e-2}}})
    )


def test_shipped_example_configs_load() -> None:
    folder = Path(__file__).resolve().parents[2] / "medhpc" / "configs"
    files = sorted(folder.glob("train-*.yaml"))
    assert len(files) >= 4
    for path in files:
        load_train_config(path)
