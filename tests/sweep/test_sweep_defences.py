"""The sweep's ``defences`` axis: every model of the grid once per defence, named by it; VIB + AT."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medhpc.config import ConfigError, config_hash, from_dict
from medhpc.sweep import SweepConfig, expand, load_sweep

BASE = {
    "name": "t",
    "datasets": [{"name": "aptos", "kind": "aptos", "root": "unused", "size": 64, "synthetic": {"n": 100}}],
    "models": {"archs": ["resnet50"], "heads": ["linear", "vib"], "betas": [1e-3, 1e-2]},
    "train": {"epochs": 2},
    "attacks": [{"attack": "pgd", "eps": 0.02, "steps": 2}],
    "out": "/tmp/sweep",
}
PGD = {"method": "pgd", "eps": 0.02, "steps": 3}


def trains(cfg: SweepConfig) -> list:
    graph = expand(cfg)
    return [graph.jobs[k] for k in graph.by_kind("train")]


def test_without_defences_every_job_keeps_its_name() -> None:
    plain = expand(from_dict(SweepConfig, BASE))
    assert list(expand(from_dict(SweepConfig, {**BASE, "defences": None})).jobs) == list(plain.jobs)
    assert config_hash(from_dict(SweepConfig, BASE)) == config_hash(from_dict(SweepConfig, {**BASE, "defences": None}))
    # "none" alone is plain training: the same training runs (the sweep's own hash aside).
    assert {j.run for j in trains(from_dict(SweepConfig, {**BASE, "defences": ["none"]}))} == {
        j.run for j in trains(from_dict(SweepConfig, BASE))
    }


def test_each_defence_is_its_own_run_and_vib_trains_on_the_same_defences_base() -> None:
    cfg = from_dict(SweepConfig, {**BASE, "defences": ["none", PGD, {"method": "trades", "eps": 0.02}]})
    jobs = trains(cfg)
    assert len(jobs) == 3 * (1 + 2)  # per defence: the linear base and one VIB per beta
    plain = {j.run for j in trains(from_dict(SweepConfig, BASE))}
    assert plain <= {j.run for j in jobs}  # the plain runs are those of the sweep without the axis
    by_run = {str(j.run): j for j in jobs}
    tags = {None: "", "pgd": "-pgdat", "trades": "-trades"}
    for job in jobs:
        adv = job.config.adversarial
        assert job.run.name.startswith(f"resnet50-{job.config.model.head}{tags[adv.method if adv else None]}-")
        if job.config.model.head == "vib":
            base = by_run[job.config.init_from]
            assert base.config.adversarial == adv and base.config.model.head == "linear"
            assert job.config.model.freeze_backbone
    assert len({j.run for j in jobs}) == len(jobs)


def test_the_paper_grid_offers_vib_plus_at() -> None:
    """sweep-paper.yaml carries the axis commented out; uncommented, it doubles the grid's
    training runs, the VIB heads with PGD-AT on the PGD-AT base model."""
    path = Path(__file__).resolve().parents[2] / "medhpc" / "configs" / "sweep-paper.yaml"
    line = next(ln for ln in path.read_text().splitlines() if ln.startswith("# defences:"))
    defences = yaml.safe_load(line[2:])["defences"]
    plain = trains(load_sweep(path))
    both = trains(load_sweep(path, {"defences": defences}))
    assert len(both) == 2 * len(plain)
    vib_at = [j for j in both if j.config.model.head == "vib" and j.config.adversarial is not None]
    assert len(vib_at) == len([j for j in plain if j.config.model.head == "vib"]) > 0
    assert all(j.config.adversarial.eps == 0.02 and "-pgdat-" in j.config.init_from for j in vib_at)


@pytest.mark.parametrize(
    ("defences", "match"),
    [
        (["none", {"method": "pgd", "eps": 2}], r"defences\[1\]\.eps: must be in \(0, 1\]"),
        ([{"method": "pdg", "eps": 0.02}], r"defences\[0\]\.method: must be one of 'pgd', 'trades', 'fgsm'"),
        (["plain"], r"defences\[0\]: must be 'none' or an adversarial-training mapping"),
        ([PGD, dict(PGD)], r"defences: lists a defence twice"),
        ([], r"defences: must list at least one entry"),
        ("pgd", r"defences: expected a list"),
    ],
)
def test_bad_defences_name_the_key(defences: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(SweepConfig, {**BASE, "defences": defences}, source="sweep.yaml")
