"""``python -m medhpc.attacks``: a finished run's kept model under a list of attacks (and the old
name ``python -m medhpc.attack``, an alias that says so)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medhpc.attacks.evaluate import RobustnessConfig, evaluate_run, load_config, output_path
from medhpc.config import ConfigError, from_dict
from medhpc.data.cache import CacheLoader, to_float
from medhpc.models.checkpoint import load_model
from medhpc.train import from_mapping, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = from_mapping(
        {
            "model": {"arch": "resnet50", "head": "linear"},
            "data": {"cache": str(tiny_cache)},
            "optim": {"name": "adam", "lr": 1e-3},
            "epochs": 1,
            "out": str(tmp_path_factory.mktemp("attack-runs")),
        }
    )
    return train(cfg, progress=False)


def test_cli_writes_accuracy_under_each_attack_and_skips_on_rerun(run: Path, tmp_path: Path) -> None:
    cfg_path = tmp_path / "rob.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "run": str(run),
                "attacks": [
                    {"attack": "none"},
                    {"attack": "fgsm", "eps": 0.03},
                    {"attack": "pgd", "eps": 0.03, "step_size": 0.01, "steps": 3},
                ],
                "label_mode": "true",
                "limit": 12,
                "batch_size": 5,
            }
        )
    )
    proc = subprocess.run([sys.executable, "-m", "medhpc.attacks", str(cfg_path), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert out.parent == run and out == output_path(load_config(cfg_path))
    result = json.loads(out.read_text())
    assert result["n"] == 12 and [r["config"]["attack"] for r in result["attacks"]] == ["none", "fgsm", "pgd"]

    # Clean accuracy equals the kept model's accuracy on those 12 test images, computed here.
    model, _ = load_model(run)
    with CacheLoader(json.loads((run / "metrics.json").read_text())["cache"], "test", batch_size=12) as loader:
        images, labels = next(iter(loader))
    with torch.no_grad():
        clean = (model(to_float(images)).argmax(1) == labels).double().mean().item()
    acc = {r["config"]["attack"]: r["accuracy"] for r in result["attacks"]}
    assert acc["none"] == pytest.approx(clean)
    assert acc["pgd"] <= acc["none"] and acc["fgsm"] <= acc["none"]

    stamp = out.stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "medhpc.attack", str(cfg_path), "--quiet"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0 and out.stat().st_mtime_ns == stamp
    assert "now 'python -m medhpc.attacks'" in again.stderr and again.stdout == proc.stdout  # the old name still works


def test_paper_preset_is_the_appendix_rows() -> None:
    cfg = from_dict(RobustnessConfig, {"run": "r", "preset": "paper"})
    names = [(a.attack, a.eps, a.steps) for a in cfg.attack_list()]
    assert names[:3] == [("none", None, None), ("fgsm", 0.02, None), ("cw_l2", None, 1000)]
    assert [n for n in names if n[0] == "pgd"] == [("pgd", 0.02, s) for s in (1, 2, 5)]
    assert [n for n in names if n[0] == "spsa"] == [("spsa", e, 5) for e in (0.02, 0.05, 0.1, 0.5, 1.0)]
    assert all(a.label_mode == "pred" for a in cfg.attack_list())


def test_top_level_label_mode_applies_to_every_attack() -> None:
    listed = [{"attack": "none"}, {"attack": "fgsm", "eps": 0.1}]
    kept = from_dict(RobustnessConfig, {"run": "r", "attacks": listed})
    assert [a.label_mode for a in kept.attack_list()] == ["true", "true"]
    pred = from_dict(RobustnessConfig, {"run": "r", "attacks": listed, "preset": "paper", "label_mode": "pred"})
    assert {a.label_mode for a in pred.attack_list()} == {"pred"} and len(pred.attack_list()) == 13
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.targeted: a targeted attack needs label_mode 'true'"):
        from_dict(RobustnessConfig, {"run": "r", "label_mode": "pred",
                                     "attacks": [{"attack": "fgsm", "eps": 0.1, "targeted": True}]})  # fmt: skip


def test_bad_robustness_configs_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("run: x\nattacks:\n  - {attack: fgsm}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: attacks\[0\]\.eps: required by 'fgsm'"):
        load_config(path)
    path.write_text("run: x\n")
    with pytest.raises(ConfigError, match="attacks: list at least one attack"):
        load_config(path)
    path.write_text("run: x\npreset: paper\nlimit: 0\n")
    with pytest.raises(ConfigError, match="limit: must be >= 1"):
        load_config(path)


def test_a_missing_run_is_named(tmp_path: Path) -> None:
    from medhpc.train.checkpoint import CheckpointError

    cfg = from_dict(RobustnessConfig, {"run": str(tmp_path / "nope"), "preset": "paper", "out": str(tmp_path)})
    with pytest.raises(CheckpointError, match="does not exist: .*nope"):
        evaluate_run(cfg)


def test_shipped_attack_configs_load() -> None:
    folder = ROOT / "medhpc" / "configs"
    files = sorted(folder.glob("attack-*.yaml"))
    assert len(files) >= 2
    for path in files:
        assert load_config(path, {"run": "somewhere"}).attack_list()


def test_an_adaptive_attack_gets_its_detector_fitted_on_the_val_split(run: Path, tmp_path: Path) -> None:
    from medhpc.data.cache import CacheDataset

    cfg = from_dict(RobustnessConfig, {
        "run": str(run), "label_mode": "true", "limit": 8, "out": str(tmp_path),
        "attacks": [{"attack": "pgd", "eps": 0.03, "steps": 2},
                    {"attack": "adaptive", "eps": 0.03, "steps": 2, "search_steps": 2, "fpr": 0.2}],
    })  # fmt: skip
    result = json.loads(evaluate_run(cfg, progress=False).read_text())
    row = result["attacks"][1]
    det = row["detector"]
    n_val = len(CacheDataset(json.loads((run / "metrics.json").read_text())["cache"], "val"))
    assert det["split"] == "val" and det["n"] == n_val and abs(det["rejected"] - 0.2 * n_val) <= 1
    assert row["accuracy"] <= row["system_accuracy"] <= 1.0
