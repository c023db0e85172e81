"""Wasserman's study as a preset (``sweep-wasserman.yaml``): its graph, the grid points a head
cannot take (soft attention on ViT-B/16), and the defences restricted to some grid points."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medhpc.attacks.config import AttackConfig
from medhpc.config import ConfigError, from_dict
from medhpc.sweep import SweepConfig, expand, load_sweep

ROOT = Path(__file__).resolve().parents[2]
EPS = (0.005, 0.01, 0.02, 0.04)


def test_the_wasserman_preset_expands_into_its_study(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="medhpc.sweep.graph")
    cfg = load_sweep(ROOT / "medhpc" / "configs" / "sweep-wasserman.yaml")
    graph = expand(cfg, split_sizes={"aptos": 300, "cxr": 300})
    trains = [graph.jobs[k] for k in graph.by_kind("train")]
    models = sorted((j.dataset, j.config.model.arch, j.config.model.head,
                     j.config.adversarial.spec.title if j.config.adversarial else "") for j in trains)  # fmt: skip
    want = []
    for ds in ("aptos", "cxr"):
        want += [(ds, "inception_v3", "attention", ""), (ds, "inception_v3", "linear", ""),
                 (ds, "resnet50", "attention", ""), (ds, "resnet50", "linear", ""),
                 (ds, "resnet50", "linear", "PGD-AT"), (ds, "vit_b_16", "linear", "")]  # fmt: skip
    assert models == sorted(want)
    assert any("vit_b_16 + attention left out of the grid" in r.message for r in caplog.records)
    defended = next(j for j in trains if j.config.adversarial is not None)
    assert "-pgdat-" in str(defended.run) and defended.config.adversarial.eps == 0.02  # type: ignore[union-attr]
    sizes = {j.config.model.arch: j.config.data.image_size for j in trains}
    assert sizes == {"resnet50": 224, "inception_v3": None, "vit_b_16": 224}

    expected = {AttackConfig("none")}
    for eps in EPS:
        expected |= {AttackConfig("fgsm", eps=eps), AttackConfig("pgd", eps=eps, steps=10),
                     AttackConfig("apgd", eps=eps)}  # fmt: skip
    expected |= {AttackConfig("cw_l2"), AttackConfig("worst_case", eps=0.02)}
    for job in trains:
        attacks = {graph.jobs[k].attack for k in graph.by_kind("attack") if graph.jobs[k].run == str(job.run)}
        assert attacks == expected, job.run
    assert len(graph.by_kind("attack")) == len(trains) * len(expected) * 2  # 300 images in shards of 256
    assert len(graph.by_kind("evaluate")) == len(trains) and len(graph.by_kind("report")) == 1
    assert cfg.report.maps and cfg.report.map_images == 64


BASE = {
    "name": "t",
    "datasets": [{"name": "aptos", "kind": "aptos", "root": "unused", "size": 64, "synthetic": {"n": 100}}],
    "models": {"archs": ["resnet50", "inception_v3"], "heads": ["linear", "attention", "vib"], "betas": [1e-3]},
    "attacks": [{"attack": "none"}],
    "defences": ["none", {"method": "fgsm", "eps": 0.01}],
    "out": "/tmp/sweep",
}


def _models(**change: object) -> set[tuple[str, str, bool]]:
    graph = expand(from_dict(SweepConfig, {**BASE, **change}))
    return {(graph.jobs[k].config.model.arch, graph.jobs[k].config.model.head, graph.jobs[k].config.adversarial
             is not None) for k in graph.by_kind("train")}  # fmt: skip


def test_defences_apply_only_to_the_defended_grid_points() -> None:
    everything = _models()
    assert len(everything) == 12  # 2 archs x 3 heads x 2 defences
    only = _models(defended_archs=["resnet50"], defended_heads=["linear", "vib"])
    assert {m for m in only if m[2]} == {("resnet50", "linear", True), ("resnet50", "vib", True)}
    assert {m for m in only if not m[2]} == {m for m in everything if not m[2]}
    # a VIB head trains on its base model's backbone: without a defended base it is not defended either
    assert not any(m[2] for m in _models(defended_heads=["vib"]))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"defended_archs": ["vit_b_16"]}, r"defended_archs\[0\]: must be one of the grid's"),
        ({"defended_heads": ["linear"], "defences": None}, "no defences are listed"),
    ],
)
def test_bad_defended_lists_name_the_key(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(SweepConfig, {**BASE, **change})
