"""Expand a :class:`SweepConfig` into its jobs and their dependencies.

prepare (one per dataset) -> train (base heads; VIB heads after the base model they copy the
backbone of) -> attack (one per model x attack x shard of the attacked split) -> evaluate (one
per model: every attack's shards into one robustness table) -> report (one).

Every job is a frozen dataclass named ``<kind>-<config hash>``; its output path follows from
its config, so a rerun knows what is done without a database. Attack shards need the size of
the attacked split, known once the dataset is prepared: :func:`expand` leaves the attack,
evaluate jobs of a dataset out until its split size is given, and the report until all are
(:func:`split_sizes` reads them from the prepared caches).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medhpc.attacks.config import AttackConfig, paper_attacks
from medhpc.config import config_hash, from_dict, to_dict
from medhpc.models.config import ModelConfig
from medhpc.report.config import ReportSettings
from medhpc.store.schema import shard_filename
from medhpc.sweep.config import DatasetSpec, SweepConfig, TrainSettings
from medhpc.train.config import TrainConfig
from medhpc.train.loop import run_dir


@dataclass(frozen=True)
class PrepareJob:
    """Write the synthetic stand-in (if asked) and prepare the dataset's cache."""

    dataset: DatasetSpec
    data_root: str
    cache: str

    kind = "prepare"


@dataclass(frozen=True)
class TrainJob:
    """One :func:`medhpc.train.train` run."""

    config: TrainConfig
    dataset: str

    kind = "train"

    @property
    def run(self) -> Path:
        return run_dir(self.config)


@dataclass(frozen=True)
class AttackJob:
    """One attack on images ``[start, stop)`` of a split, for one trained model: one shard."""

    run: str
    attack: AttackConfig
    cache: str
    split: str
    start: int
    stop: int
    set_size: int
    image_size: int | None
    seed: int
    set_hash: str
    shard: str

    kind = "attack"


@dataclass(frozen=True)
class EvaluateJob:
    """One model's evaluation from its attack shards: robustness table, uncertainty, maps
    (:func:`medhpc.report.analyse.evaluate_model`)."""

    run: str
    shard_sets: tuple[str, ...]
    output: str
    dataset: str
    cache: str
    split: str
    image_size: int | None
    settings: ReportSettings

    kind = "evaluate"


@dataclass(frozen=True)
class ReportJob:
    """The sweep's report over every evaluated model (:func:`medhpc.report.build.build_report`);
    ``output`` is its ``summary.json``, written last."""

    evaluations: tuple[str, ...]
    output: str
    name: str
    settings: ReportSettings

    kind = "report"


Job = PrepareJob | TrainJob | AttackJob | EvaluateJob | ReportJob


def job_key(job: Job) -> str:
    """``<kind>-<hash>``: the job's name in logs, status and the executor's folders."""
    return f"{job.kind}-{config_hash(job)}"


@dataclass
class JobGraph:
    """Jobs by key and, for each, the keys it waits for (in expansion order)."""

    jobs: dict[str, Job]
    deps: dict[str, tuple[str, ...]]

    def add(self, job: Job, deps: tuple[str, ...] = ()) -> str:
        key = job_key(job)
        self.jobs.setdefault(key, job)
        self.deps.setdefault(key, deps)
        return key

    def by_kind(self, kind: str) -> list[str]:
        return [k for k, j in self.jobs.items() if j.kind == kind]


def shard_set_hash(run: str, attack: AttackConfig, split: str, n: int, image_size: int | None, seed: int) -> str:
    """Names one set of shards (one model, one attack, one split): in every file name of the
    set and in its attributes, so a shard from another set is recognised."""
    return config_hash({"run": run, "attack": to_dict(attack), "split": split, "set_size": n,
                        "image_size": image_size, "seed": seed})  # fmt: skip


def attack_list(cfg: SweepConfig) -> list[AttackConfig]:
    rows = list(paper_attacks(cfg.label_mode or "pred")) if cfg.attack_preset == "paper" else []
    rows += list(cfg.attacks)
    if cfg.label_mode is not None:
        rows = [replace(a, label_mode=cfg.label_mode) for a in rows]
    return rows


def _prepare_job(cfg: SweepConfig, ds: DatasetSpec) -> PrepareJob:
    out = Path(cfg.out)
    data_root = str(out / "data" / ds.name) if ds.synthetic is not None else ds.root
    tag = config_hash(ds, 8)
    return PrepareJob(ds, data_root, str(out / "cache" / f"{ds.name}-{ds.size}-{tag}.h5"))


def _train_config(
    cfg: SweepConfig, cache: str, model: ModelConfig, settings: TrainSettings, weighting: str, init_from: str | None
) -> TrainConfig:
    size = (cfg.image_size or {}).get(model.arch)
    data = {
        "model": to_dict(model),
        "data": {"cache": cache, "image_size": size},
        "optim": to_dict(settings.optim),
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "patience": settings.patience,
        "min_delta": settings.min_delta,
        "aux_weight": settings.aux_weight,
        "loss_weighting": weighting,
        "init_from": init_from,
        "seed": cfg.seed,
        "precision": settings.precision,
        "num_workers": settings.num_workers,
        "device": cfg.device,
        "out": str(Path(cfg.out) / "runs"),
    }
    if size is None:
        del data["data"]["image_size"]
    return from_dict(TrainConfig, data, source=f"sweep {cfg.name}")


def _model(cfg: SweepConfig, arch: str, head: str, beta: float | None = None) -> ModelConfig:
    g = cfg.models
    extra: dict[str, Any] = {}
    if head == "vib":
        extra["vib"] = replace(g.vib, beta=beta if beta is not None else g.vib.beta)
    elif head == "attention":
        extra["attention"] = g.attention
    return ModelConfig(
        arch=arch,  # type: ignore[arg-type]
        head=head,  # type: ignore[arg-type]
        weights=g.weights,
        normalization=g.normalization,
        freeze_backbone=head == "vib",
        **extra,
    )


def expand(cfg: SweepConfig, split_sizes: dict[str, int] | None = None) -> JobGraph:
    """Every job of the sweep; attack, evaluate and report jobs only once ``split_sizes``
    (attacked split size per dataset name) are known."""
    graph = JobGraph({}, {})
    trained: list[tuple[str, TrainJob]] = []
    for ds in cfg.datasets:
        prep = _prepare_job(cfg, ds)
        prep_key = graph.add(prep)
        for arch in cfg.models.archs:
            for weighting in cfg.models.loss_weightings:
                base_key, base_job = None, None
                for head in cfg.models.heads:
                    if head == "vib":
                        continue
                    job = TrainJob(
                        _train_config(cfg, prep.cache, _model(cfg, arch, head), cfg.train, weighting, None), ds.name
                    )
                    key = graph.add(job, (prep_key,))
                    trained.append((key, job))
                    if head == "linear":
                        base_key, base_job = key, job
                if "vib" in cfg.models.heads:
                    assert base_key is not None and base_job is not None
                    for beta in cfg.models.betas:
                        model = _model(cfg, arch, "vib", beta)
                        job = TrainJob(
                            _train_config(cfg, prep.cache, model, cfg.vib_train, weighting, str(base_job.run)), ds.name
                        )
                        trained.append((graph.add(job, (prep_key, base_key)), job))
    if split_sizes is None:
        return graph

    attacks = attack_list(cfg)
    evaluations = []
    for train_key, tj in trained:
        if tj.dataset not in split_sizes:
            continue  # not prepared yet (or its prepare job failed)
        n = split_sizes[tj.dataset]
        if cfg.limit is not None:
            n = min(n, cfg.limit)
        run = str(tj.run)
        shard_sets, shard_keys = [], []
        for attack in attacks:
            folder = Path(cfg.out) / "shards" / tj.run.name / f"{attack.name}-{config_hash(attack)}"
            shard_sets.append(str(folder))
            image_size = tj.config.data.image_size
            set_hash = shard_set_hash(run, attack, cfg.split, n, image_size, cfg.seed)
            for start in range(0, n, cfg.shard_size):
                stop = min(n, start + cfg.shard_size)
                job = AttackJob(
                    run=run, attack=attack, cache=tj.config.data.cache, split=cfg.split, start=start, stop=stop,
                    set_size=n, image_size=image_size, seed=cfg.seed, set_hash=set_hash,
                    shard=str(folder / shard_filename(set_hash, start, stop)),
                )  # fmt: skip
                shard_keys.append(graph.add(job, (train_key,)))
        ev = EvaluateJob(run, tuple(shard_sets), str(Path(cfg.out) / "eval" / f"{tj.run.name}.json"),
                         dataset=tj.dataset, cache=tj.config.data.cache, split=cfg.split,
                         image_size=tj.config.data.image_size, settings=cfg.report)  # fmt: skip
        evaluations.append((graph.add(ev, tuple(shard_keys)), ev))
    if all(ds.name in split_sizes for ds in cfg.datasets):
        report = ReportJob(tuple(e.output for _, e in evaluations), str(Path(cfg.out) / "report" / "summary.json"),
                           name=cfg.name, settings=cfg.report)  # fmt: skip
        graph.add(report, tuple(k for k, _ in evaluations))
    return graph


def split_sizes(cfg: SweepConfig) -> dict[str, int] | None:
    """The attacked split's size per prepared dataset, from the caches; None while none is.

    The attack jobs of a dataset appear once it is prepared; the report once all are.
    """
    from medhpc.data.cache import cache_info

    sizes = {}
    for ds in cfg.datasets:
        cache = Path(_prepare_job(cfg, ds).cache)
        if cache.is_file():
            sizes[ds.name] = int(cache_info(cache)["counts"].get(cfg.split, 0))
    return sizes or None
