"""The sweep's side of the adaptive attack: which models get which detector scores, and the
detector an attack job fits on the validation split once per shard set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from medhpc.attacks.config import AttackConfig
from medhpc.config import from_dict
from medhpc.data import make_synthetic, prepare
from medhpc.data.cache import CacheDataset
from medhpc.sweep import SweepConfig, expand
from medhpc.sweep.jobs import AttackJob

BASE = {
    "name": "t",
    "datasets": [{"name": "aptos", "kind": "aptos", "root": "unused", "size": 64, "synthetic": {"n": 100}}],
    "models": {"archs": ["resnet50"], "heads": ["linear", "vib"], "betas": [1e-3]},
    "train": {"epochs": 2},
    "attacks": [],
    "attack_preset": ["paper", "adaptive"],
    "shard_size": 10,
    "out": "/tmp/sweep",
}


def test_the_adaptive_preset_gives_every_model_entropy_and_stochastic_heads_mi_and_variance() -> None:
    graph = expand(from_dict(SweepConfig, BASE), split_sizes={"aptos": 10})
    heads = {str(graph.jobs[k].run): graph.jobs[k].config.model.head for k in graph.by_kind("train")}
    by_run: dict[str, set[str]] = {}
    for key in graph.by_kind("attack"):
        job = graph.jobs[key]
        by_run.setdefault(job.run, set()).add(job.attack.name)
    for run, names in by_run.items():
        adaptive = {n for n in names if n.startswith("adaptive")}
        if heads[run] == "vib":
            assert adaptive == {"adaptive-linf-eps0.02-s5-entropy", "adaptive-linf-eps0.02-s5-entropy-eot20",
                                "adaptive-linf-eps0.02-s5-mi", "adaptive-linf-eps0.02-s5-mi-eot20",
                                "adaptive-linf-eps0.02-s5-var-eot20"}  # fmt: skip
            assert "pgd-linf-eps0.02-s5-eot20" in names
        else:
            assert adaptive == {"adaptive-linf-eps0.02-s5-entropy"}, names
            assert "pgd-linf-eps0.02-s5-eot20" not in names
        for name in adaptive:  # every adaptive row has its non-adaptive counterpart in the sweep
            job = next(graph.jobs[k] for k in graph.by_kind("attack")
                       if graph.jobs[k].run == run and graph.jobs[k].attack.name == name)  # fmt: skip
            counterpart = job.attack.non_adaptive()
            assert any(graph.jobs[k].attack == counterpart for k in graph.by_kind("attack") if graph.jobs[k].run == run)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).amax(dim=(2, 3)))


def test_an_attack_job_fits_the_detector_on_val_once_and_every_slice_reads_it(tmp_path: Path) -> None:
    make_synthetic("aptos", tmp_path / "aptos", n=60, size=16, seed=0)
    cache = tmp_path / "aptos.h5"
    prepare("aptos", tmp_path / "aptos", cache, size=16, workers=0, progress=False)
    n_val = len(CacheDataset(cache, "val"))
    torch.manual_seed(0)
    model = Tiny().eval()
    cfg = AttackConfig("adaptive", eps=0.02, steps=2, search_steps=2, fpr=0.1)

    def job(start: int, **kw: object) -> AttackJob:
        fields = {"run": "unused", "attack": cfg, "cache": str(cache), "split": "test", "start": start,
                  "stop": start + 2, "set_size": 4, "image_size": None, "seed": 3, "set_hash": "ab" * 8,
                  "shard": str(tmp_path / "set" / f"s{start}.h5"), **kw}  # fmt: skip
        return AttackJob(**fields)  # type: ignore[arg-type]

    (tmp_path / "set").mkdir()
    first = job(0).detector(model, torch.device("cpu"))
    path = tmp_path / "set" / "detector.json"
    assert json.loads(path.read_text()) == first.to_dict()
    assert first.n == n_val and first.split == "val" and first.seed == 3 and abs(first.rejected - 0.1 * n_val) <= 1
    path.write_text(path.read_text().replace(str(first.threshold), "0.5"))
    assert job(2).detector(model, torch.device("cpu")).threshold == 0.5  # read, not refitted
    with pytest.raises(ValueError, match="other settings"):
        job(2, seed=4).detector(model, torch.device("cpu"))
    path.write_text("{")
    with pytest.raises(ValueError, match="damaged"):
        job(2).detector(model, torch.device("cpu"))
