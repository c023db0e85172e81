"""A sweep config expands into the right jobs, named stably by their config hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from medhpc.config import ConfigError, from_dict
from medhpc.sweep import SweepConfig, expand, job_key, load_sweep

BASE = {
    "name": "t",
    "datasets": [
        {"name": "aptos", "kind": "aptos", "root": "unused", "size": 64, "synthetic": {"n": 100}},
        {"name": "cxr", "kind": "cxr", "root": "/data/kermany", "size": 64},
    ],
    "models": {"archs": ["resnet50", "inception_v3"], "heads": ["linear", "vib", "attention"], "betas": [1e-3, 1e-2]},
    "train": {"epochs": 2},
    "image_size": {"inception_v3": 75},
    "attacks": [{"attack": "fgsm", "eps": 0.02}, {"attack": "pgd", "eps": 0.02, "steps": 2}],
    "shard_size": 10,
    "out": "/tmp/sweep",
}


def test_grid_expands_to_prepare_and_train_jobs_with_dependencies() -> None:
    graph = expand(from_dict(SweepConfig, BASE))
    assert len(graph.by_kind("prepare")) == 2
    trains = graph.by_kind("train")
    # per dataset and arch: linear, attention, and one VIB per beta
    assert len(trains) == 2 * 2 * (2 + 2)
    assert not graph.by_kind("attack")  # split sizes unknown until prepared
    for key in trains:
        job = graph.jobs[key]
        cfg = job.config
        deps = graph.deps[key]
        assert graph.jobs[deps[0]].kind == "prepare" and graph.jobs[deps[0]].cache == cfg.data.cache
        if cfg.model.head == "vib":
            base = graph.jobs[deps[1]]
            assert base.config.model.head == "linear" and base.config.model.arch == cfg.model.arch
            assert cfg.init_from == str(base.run) and cfg.model.freeze_backbone
            assert cfg.optim.name == "adam" and cfg.epochs == 20  # the VIB recipe
        else:
            assert cfg.epochs == 2 and cfg.init_from is None
        assert cfg.data.image_size == (75 if cfg.model.arch == "inception_v3" else None)
    synthetic = [graph.jobs[k] for k in graph.by_kind("prepare") if graph.jobs[k].dataset.name == "aptos"][0]
    assert synthetic.data_root == "/tmp/sweep/data/aptos"


def test_attack_shards_cover_the_split_and_feed_one_evaluation_per_model() -> None:
    cfg = from_dict(SweepConfig, BASE)
    graph = expand(cfg, split_sizes={"aptos": 25, "cxr": 9})
    attacks = [graph.jobs[k] for k in graph.by_kind("attack")]
    n_models = len(graph.by_kind("train"))
    # aptos models: 2 attacks x 3 shards (10, 10, 5); cxr models: 2 attacks x 1 shard
    assert len(attacks) == (n_models // 2) * 2 * 3 + (n_models // 2) * 2 * 1
    one = sorted((a.start, a.stop) for a in attacks if "aptos" in a.cache and a.attack.attack == "fgsm"
                 and a.run == attacks[0].run)  # fmt: skip
    assert one == [(0, 10), (10, 20), (20, 25)]
    evals = graph.by_kind("evaluate")
    assert len(evals) == n_models
    assert all(graph.jobs[d].kind == "attack" for k in evals for d in graph.deps[k])
    assert set(graph.deps[graph.by_kind("report")[0]]) == set(evals)


def test_keys_are_stable_and_ignore_where_and_how() -> None:
    a = expand(from_dict(SweepConfig, BASE))
    b = expand(from_dict(SweepConfig, {**BASE, "workers": 2, "executor": "debug"}))
    assert list(a.jobs) == list(b.jobs)
    c = expand(from_dict(SweepConfig, {**BASE, "seed": 1}))
    assert set(a.by_kind("train")).isdisjoint(c.by_kind("train"))
    assert a.by_kind("prepare") == c.by_kind("prepare")  # the data does not depend on the run seed
    assert all(k.startswith(f"{j.kind}-") for k, j in a.jobs.items()) and job_key(a.jobs[next(iter(a.jobs))])


def test_limit_caps_the_attacked_images() -> None:
    graph = expand(from_dict(SweepConfig, {**BASE, "limit": 12}), split_sizes={"aptos": 25, "cxr": 9})
    stops = {graph.jobs[k].stop for k in graph.by_kind("attack")}
    assert max(stops) == 12 and {graph.jobs[k].set_size for k in graph.by_kind("attack")} == {12, 9}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"datasets": []}, "datasets: must list at least one dataset"),
        ({"attacks": []}, "attacks: list at least one attack"),
        ({"models": {"heads": ["vib"]}}, "models.heads: VIB heads train on a base model's backbone"),
        ({"models": {"archs": ["resnet50", "resnet50"]}}, "models.archs: lists a value twice"),
        ({"executor": "slurm"}, "profile: the slurm executor needs a cluster profile"),
        ({"shard_size": 0}, "shard_size: must be >= 1"),
        ({"datasets": [{"name": "a b", "kind": "aptos", "root": "x"}]}, r"datasets\[0\]\.name: must be a short label"),
        (
            {"datasets": [{"name": "a", "kind": "aptos", "root": "x", "fractions": [0.5, 0.5, 0.5]}]},
            "fractions: must be three",
        ),
        ({"attacks": [{"attack": "pgd"}]}, r"attacks\[0\]\.eps: required by 'pgd'"),
        ({"modles": {}}, r"modles: unknown key \(did you mean 'models'\?\)"),
        ({"image_size": {"resnet50": "big"}}, r"image_size\.resnet50: expected an integer"),
        ({"image_size": {"vgg16": 224}}, r"image_size\.vgg16: unknown architecture"),
    ],
)
def test_bad_sweep_configs_name_the_key(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(SweepConfig, {**BASE, **change}, source="sweep.yaml")


def test_shipped_sweep_configs_load() -> None:
    folder = Path(__file__).resolve().parents[2] / "medhpc" / "configs"
    files = sorted(folder.glob("sweep-*.yaml"))
    assert {f.name for f in files} >= {"sweep-demo.yaml", "sweep-paper.yaml"}
    for path in files:
        cfg = load_sweep(path)
        assert expand(cfg).jobs


def test_synthetic_lesions_enter_the_cache_name_only_when_set() -> None:
    """``synthetic.lesions`` was added after caches existed: unset, the prepare job (and so the
    cache, and every job after it) keeps its name; set, it names another cache."""
    from medhpc.sweep.graph import prepare_job

    def cache(synthetic: dict[str, object]) -> str:
        data = {**BASE, "datasets": [{**BASE["datasets"][0], "synthetic": synthetic}]}
        cfg = from_dict(SweepConfig, data)
        return prepare_job(cfg, cfg.datasets[0]).cache

    assert cache({"n": 100}) == cache({"n": 100, "lesions": None})
    assert cache({"n": 100, "lesions": 40}) != cache({"n": 100})
    with pytest.raises(ConfigError, match=r"lesions: must be >= 1"):
        from_dict(SweepConfig, {**BASE, "datasets": [{**BASE["datasets"][0], "synthetic": {"n": 100, "lesions": 0}}]})


def test_local_jobs_share_the_cores_out_as_torch_threads() -> None:
    """Two 2-thread jobs on 2 cores wait on each other's threads: a local sweep gives each of
    its ``workers`` jobs cores // workers threads (at least one); a cluster job keeps torch's
    default, its allocation's cores."""
    import os

    from medhpc.sweep.launch import SUBMITIT, JobRunner, job_threads

    cores = len(os.sched_getaffinity(0))
    for workers in (1, 2, 64):
        cfg = from_dict(SweepConfig, {**BASE, "workers": workers})
        assert job_threads(cfg, SUBMITIT["local"]) == max(1, cores // workers)
        assert job_threads(cfg, SUBMITIT["slurm"]) is None
    assert JobRunner().threads is None


def test_the_strong_preset_runs_beside_the_papers_and_cw_with_eot_only_on_stochastic_heads() -> None:
    cfg = from_dict(SweepConfig, {**BASE, "attacks": [], "attack_preset": ["paper", "strong"]})
    graph = expand(cfg, split_sizes={"aptos": 10, "cxr": 10})
    by_run: dict[str, set[str]] = {}
    for key in graph.by_kind("attack"):
        job = graph.jobs[key]
        by_run.setdefault(job.run, set()).add(job.attack.name)
    heads = {str(graph.jobs[k].run): graph.jobs[k].config.model.head for k in graph.by_kind("train")}
    for run, names in by_run.items():
        assert "worst_case-linf-eps0.02-eot20-pgd+apgd_ce+apgd_margin+fab+square" in names
        assert "cw_l2-s1000" in names and "square-linf-eps0.02-q1286" in names
        assert ("cw_l2-s1000-eot20" in names) == (heads[run] == "vib"), (heads[run], names)
    assert len(by_run) == len(heads)
