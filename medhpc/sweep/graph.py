"""Expand a :class:`SweepConfig` into its jobs and their dependencies.

prepare (one per dataset) -> train (base heads; VIB heads after the base model they copy the
backbone of; all of them once per entry of ``defences``) -> attack (one per model x attack x
shard of the attacked split) -> evaluate (one per model: every attack's shards into one
robustness table) -> report (one).

Every job (:mod:`medhpc.sweep.jobs`) is a frozen dataclass named ``<kind>-<config hash>``;
its output path follows from its config, so a rerun knows what is done without a database.
Attack shards need the size of the attacked split, known once the dataset is prepared:
:func:`expand` leaves the attack, evaluate jobs of a dataset out until its split size is
given, and the report until all are (:func:`split_sizes` reads them from the prepared caches).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medhpc.attacks.config import AttackConfig
from medhpc.attacks.detector import STOCHASTIC_ONLY
from medhpc.attacks.presets import preset_attacks
from medhpc.config import config_hash, from_dict, to_dict
from medhpc.models.config import ModelConfig
from medhpc.models.registry import get_arch, get_head, refusal
from medhpc.store.schema import shard_filename
from medhpc.sweep.jobs import AttackJob, EvaluateJob, Job, PrepareJob, ReportJob, TrainJob, job_key
from medhpc.train.config import TrainConfig

if TYPE_CHECKING:  # only read here; its check imports the executors, which import this module
    from medhpc.sweep.config import DatasetSpec, SweepConfig, TrainSettings
    from medhpc.train.adversarial import AdversarialConfig

log = logging.getLogger(__name__)


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
    rows = preset_attacks(cfg.attack_preset, cfg.label_mode or "pred")
    rows += list(cfg.attacks)
    if cfg.label_mode is not None:
        rows = [replace(a, label_mode=cfg.label_mode) for a in rows]
    return rows


def model_attacks(attacks: list[AttackConfig], stochastic: bool) -> list[AttackConfig]:
    """The attacks a model gets: on a deterministic one, a config that differs from another
    listed one only by its EOT draws is the same attack (one draw is all there is), so it is
    left out (the strong preset's CW-L2 with EOT beside the paper's CW-L2), and so is an
    attack on a detector score that is 0 without draws (mutual information, variance)."""
    if stochastic:
        return attacks
    kept = [a for a in attacks if a.eot in (None, 1) or replace(a, eot=1) not in attacks]
    return [a for a in kept if a.score not in STOCHASTIC_ONLY]


def prepare_job(cfg: SweepConfig, ds: DatasetSpec) -> PrepareJob:
    """The job that prepares ``ds`` (a synthetic one is written under ``out/data`` first)."""
    out = Path(cfg.out)
    data_root = str(out / "data" / ds.name) if ds.synthetic is not None else ds.root
    tag = config_hash(ds, 8)
    return PrepareJob(ds, data_root, str(out / "cache" / f"{ds.name}-{ds.size}-{tag}.h5"))


def _train_config(
    cfg: SweepConfig,
    cache: str,
    model: ModelConfig,
    settings: TrainSettings,
    weighting: str,
    init_from: str | None,
    defence: AdversarialConfig | None = None,
) -> TrainConfig:
    size = (cfg.image_size or {}).get(model.arch)
    data: dict[str, Any] = {
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
    if defence is not None:  # left out when plain: the training config's hash is what it was
        data["adversarial"] = to_dict(defence)
    return from_dict(TrainConfig, data, source=f"sweep {cfg.name}")


def _model(cfg: SweepConfig, arch: str, head: str, value: float | None = None) -> ModelConfig:
    """One grid point's model: the head's settings from the grid, its sweep axis (β) set to
    ``value``; a head that trains on a base model's backbone gets it frozen."""
    g = cfg.models
    spec = get_head(head)
    extra: dict[str, Any] = {}
    if spec.settings is not None:
        settings = getattr(g, spec.name)
        if spec.axis is not None and value is not None:
            settings = replace(settings, **{spec.axis.field: value})
        extra[spec.name] = settings
    return ModelConfig(
        arch=arch, head=head, weights=g.weights, normalization=g.normalization, freeze_backbone=spec.on_base, **extra
    )


def _grid_point(cfg: SweepConfig, arch: str, head: str, defence: Any) -> bool:
    """Whether (arch, head) is trained with ``defence``: the head can sit on the architecture
    (soft attention needs a convolutional map, which ViT-B/16 has not) and, for a defence other
    than plain training, the grid point is among the defended ones."""
    reason = refusal(get_arch(arch), get_head(head))
    if reason is not None:
        log.info("sweep: %s + %s left out of the grid: %s", arch, head, reason)
        return False
    return defence is None or cfg.defends(arch, head)


def expand(cfg: SweepConfig, split_sizes: dict[str, int] | None = None) -> JobGraph:
    """Every job of the sweep; attack, evaluate and report jobs only once ``split_sizes``
    (attacked split size per dataset name) are known."""
    graph = JobGraph({}, {})
    trained: list[tuple[str, TrainJob]] = []
    for ds in cfg.datasets:
        prep = prepare_job(cfg, ds)
        prep_key = graph.add(prep)
        for arch in cfg.models.archs:
            for weighting in cfg.models.loss_weightings:
                for defence in cfg.defence_list():
                    base_key, base_job = None, None
                    for head in cfg.models.heads:
                        if get_head(head).on_base or not _grid_point(cfg, arch, head, defence):
                            continue
                        train_cfg = _train_config(cfg, prep.cache, _model(cfg, arch, head), cfg.train, weighting, None,
                                                  defence)  # fmt: skip
                        job = TrainJob(train_cfg, ds.name)
                        key = graph.add(job, (prep_key,))
                        trained.append((key, job))
                        if get_head(head).base:
                            base_key, base_job = key, job
                    # Heads that train on the base model's frozen backbone (VIB), over their axis (β),
                    # with the base model's defence (VIB + AT: examples crafted through that backbone).
                    for head in cfg.models.heads:
                        spec = get_head(head)
                        if not spec.on_base or not _grid_point(cfg, arch, head, defence):
                            continue
                        if base_key is None or base_job is None:  # the base model is not trained with this defence
                            continue
                        values = getattr(cfg.models, spec.axis.grid) if spec.axis is not None else (None,)
                        for value in values:
                            model = _model(cfg, arch, head, value)
                            train_cfg = _train_config(cfg, prep.cache, model, cfg.vib_train, weighting,
                                                      str(base_job.run), defence)  # fmt: skip
                            job = TrainJob(train_cfg, ds.name)
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
        for attack in model_attacks(attacks, get_head(tj.config.model.head).stochastic):
            folder = Path(cfg.out) / "shards" / tj.run.name / f"{attack.name}-{config_hash(attack)}"
            shard_sets.append(str(folder))
            image_size = tj.config.data.image_size
            set_hash = shard_set_hash(run, attack, cfg.split, n, image_size, cfg.seed)
            for start in range(0, n, cfg.shard_size):
                stop = min(n, start + cfg.shard_size)
                shard = AttackJob(
                    run=run, attack=attack, cache=tj.config.data.cache, split=cfg.split, start=start, stop=stop,
                    set_size=n, image_size=image_size, seed=cfg.seed, set_hash=set_hash,
                    shard=str(folder / shard_filename(set_hash, start, stop)),
                )  # fmt: skip
                shard_keys.append(graph.add(shard, (train_key,)))
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
        cache = Path(prepare_job(cfg, ds).cache)
        if cache.is_file():
            sizes[ds.name] = int(cache_info(cache)["counts"].get(cfg.split, 0))
    return sizes or None
