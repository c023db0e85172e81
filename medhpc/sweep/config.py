"""The sweep config: datasets x architectures x heads x beta x defences x attacks, and how to run it.

One file describes a whole study. :mod:`medhpc.sweep.graph` expands it into typed job configs
(prepare, train, attack shards, evaluate, report), each named by its config hash, so a rerun
finds what is finished. Fields marked ``nohash`` (where outputs go, which executor) never
change what a job computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medhpc.attacks.config import AttackConfig
from medhpc.attacks.presets import PresetName
from medhpc.config import ConfigError, _Bad, _build, bad, hashed_when_set, load, nohash
from medhpc.models.config import AttentionConfig, VIBConfig
from medhpc.models.registry import ARCHS, HEADS, base_head
from medhpc.report.config import ReportSettings
from medhpc.train.adversarial import AdversarialConfig
from medhpc.train.config import OptimConfig

DataKind = Literal["aptos", "cxr", "folder"]


@dataclass(frozen=True)
class SyntheticSpec:
    """Generate the dataset first (``python -m medhpc.data synth``) instead of reading one.

    ``lesion_contrast`` and ``lesions`` (lesion strength and count scale) are ``--lesion-contrast``
    and ``--lesions`` of ``python -m medhpc.data synth``; None keeps the painters' defaults.
    ``lesions`` was added later: it enters the hash only when set, so configs without it keep
    their caches.
    """

    n: int
    size: int = 128
    seed: int = 0
    lesion_contrast: float | None = None
    lesions: int | None = hashed_when_set()

    def _check(self) -> None:
        if self.n < 20:
            raise bad("n", f"must be >= 20 images (each split needs both classes), got {self.n}")
        if self.size < 32:
            raise bad("size", f"must be >= 32 px, got {self.size}")
        if self.lesions is not None and self.lesions < 1:
            raise bad("lesions", f"must be >= 1, got {self.lesions}")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset as distributed (``root``), or a synthetic stand-in written there, and the
    cache it is prepared into (image ``size``, split ``seed`` and ``fractions``).

    ``ignore_unknown``: leave out (and log) the folders and files the reader does not know
    (``--ignore-unknown`` of ``python -m medhpc.data prepare``) instead of failing the prepare
    job. It is not hashed: it decides only whether such a tree fails, never what a cache that
    is written holds, so setting it keeps the cache name.
    """

    name: str
    kind: DataKind
    root: str
    size: int = 224
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.05, 0.15)
    compression: Literal["lzf", "gzip", "none"] = "lzf"
    synthetic: SyntheticSpec | None = None
    ignore_unknown: bool = nohash(False)

    def _check(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise bad("name", f"must be a short label of letters, digits, - and _, got {self.name!r}")
        if self.size < 32:
            raise bad("size", f"must be >= 32 px, got {self.size}")
        if abs(sum(self.fractions) - 1.0) > 1e-6 or min(self.fractions) <= 0:
            raise bad("fractions", f"must be three positive fractions summing to 1, got {list(self.fractions)}")
        if self.synthetic is not None and self.kind == "folder":
            raise bad("synthetic", "synthetic stand-ins exist for aptos and cxr only")


@dataclass(frozen=True)
class TrainSettings:
    """How every model of the sweep trains (the base recipe by default); ``vib`` below
    overrides it for the VIB heads, which train on a finished base model's frozen backbone."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 200
    batch_size: int = 32
    patience: int | None = 20
    min_delta: float = 0.0
    aux_weight: float = 0.4
    precision: Literal["auto", "fp32", "bf16", "fp16"] = nohash("auto")
    num_workers: int = nohash(0)

    def _check(self) -> None:
        if self.epochs < 1:
            raise bad("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class ModelGrid:
    """Which models: every architecture x head x loss weighting; VIB heads also x ``betas``.

    ``vib`` / ``attention`` hold the other settings of those heads (beta comes from ``betas``).
    """

    archs: tuple[str, ...] = ("resnet50",)
    heads: tuple[str, ...] = ("linear",)
    betas: tuple[float, ...] = (1e-3,)
    loss_weightings: tuple[Literal["none", "weighted"], ...] = ("none",)
    weights: str = "none"
    normalization: Literal["imagenet", "none"] = "imagenet"
    vib: VIBConfig = field(default_factory=VIBConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def _check(self) -> None:
        for key, known in (("archs", ARCHS), ("heads", HEADS)):
            for i, name in enumerate(getattr(self, key)):
                if name not in known:
                    raise bad(f"{key}[{i}]", f"must be one of {', '.join(map(repr, known))}, got {name!r}")
        for key in ("archs", "heads", "betas", "loss_weightings"):
            values = getattr(self, key)
            if not values:
                raise bad(key, "must list at least one value")
            if len(set(values)) != len(values):
                raise bad(key, f"lists a value twice: {list(values)}")
        if any(not b >= 0 for b in self.betas):
            raise bad("betas", f"must be >= 0, got {list(self.betas)}")


@dataclass(frozen=True)
class SweepConfig:
    """A whole study; see the module docstring and ``medhpc/configs/sweep-*.yaml``.

    ``image_size`` resizes batches per architecture (``{resnet50: 224}`` with a 299 px cache:
    one cache serves both backbones) in training and under attack alike.
    ``attacks`` are listed attack configs; ``attack_preset`` adds a preset's rows (``paper``: the
    first seed's Appendix B/C rows; ``strong``: the worst case and CW with EOT), or several
    presets' as a list (``[paper, strong]``). ``label_mode``, when given, sets every attack's label mode. The test
    split is attacked in shards of ``shard_size`` images (``limit``: only the first images).
    ``executor``: ``local`` (this machine, ``workers`` jobs at a time), ``slurm`` (submitit
    job arrays with the cluster ``profile``) or ``debug`` (in this process, one at a time):
    a name of :data:`medhpc.sweep.executors.EXECUTORS`.
    ``report`` sets the uncertainty operating points and the maps (:class:`ReportSettings`).
    ``defences``: the training defences crossed with the model grid, each model trained once
    per entry: ``none`` (or null) is plain training, a mapping an ``adversarial:`` section of
    the training config (:class:`~medhpc.train.adversarial.AdversarialConfig`: PGD-AT,
    TRADES, fast FGSM-AT). The heads that train on a base model's backbone (VIB) train with the
    same defence on the base model trained with it (VIB + AT). Left out: plain training only,
    and every job keeps the name it had before the axis existed. ``defended_archs`` /
    ``defended_heads`` restrict the defences other than ``none`` to those grid points (the
    Wasserman preset's one PGD-AT ResNet50). A grid point whose head cannot sit on its
    architecture (soft attention on ViT-B/16) is left out of the grid, with a log line.
    """

    name: str
    datasets: tuple[DatasetSpec, ...]
    models: ModelGrid = field(default_factory=ModelGrid)
    train: TrainSettings = field(default_factory=TrainSettings)
    vib_train: TrainSettings = field(
        default_factory=lambda: TrainSettings(
            optim=OptimConfig(name="adam", lr=1e-3, betas=(0.5, 0.999), decay_gamma=0.97, decay_every=2),
            epochs=20,
            patience=None,
        )
    )
    attacks: tuple[AttackConfig, ...] = ()
    attack_preset: PresetName | tuple[PresetName, ...] | None = None
    label_mode: Literal["true", "pred"] | None = None
    image_size: dict[str, int] | None = None
    shard_size: int = 256
    split: Literal["val", "test"] = "test"
    limit: int | None = None
    seed: int = 0
    report: ReportSettings = field(default_factory=ReportSettings)
    # Raw entries (None, "none" or a mapping) are turned into AdversarialConfig | None in
    # __post_init__, so that an error names the entry's own key (defences[1].eps).
    defences: tuple[Any, ...] | None = hashed_when_set()
    defended_archs: tuple[str, ...] | None = hashed_when_set()
    defended_heads: tuple[str, ...] | None = hashed_when_set()
    out: str = nohash("sweep-out")
    executor: str = nohash("local")
    workers: int = nohash(1)
    profile: str | None = nohash(None)
    device: str = nohash("auto")

    def __post_init__(self) -> None:
        if self.defences is None:
            return
        if not isinstance(self.defences, (list, tuple)):
            raise bad("defences", f"expected a list, got {type(self.defences).__name__} {self.defences!r}")
        items: list[AdversarialConfig | None] = []
        for i, item in enumerate(self.defences):
            if item is None or item == "none":
                items.append(None)
            elif isinstance(item, (dict, AdversarialConfig)):
                items.append(_build(AdversarialConfig, item, f"defences[{i}]."))
            else:
                raise _Bad(f"defences[{i}]", f"must be 'none' or an adversarial-training mapping, got {item!r}")
        object.__setattr__(self, "defences", tuple(items))

    def defence_list(self) -> list[AdversarialConfig | None]:
        """The defences every model of the grid is trained with (None: plain training)."""
        return list(self.defences) if self.defences is not None else [None]

    def defends(self, arch: str, head: str) -> bool:
        """Whether grid point (arch, head) is also trained with the defences other than ``none``
        (``defended_archs`` / ``defended_heads``, each left out: every one)."""
        return (self.defended_archs is None or arch in self.defended_archs) and (
            self.defended_heads is None or head in self.defended_heads
        )

    def _check(self) -> None:
        if self.defences is not None:
            if not self.defences:
                raise bad("defences", "must list at least one entry ('none' for plain training), or be left out")
            if len(set(self.defences)) != len(self.defences):
                raise bad("defences", "lists a defence twice")
        for key, grid in (("defended_archs", self.models.archs), ("defended_heads", self.models.heads)):
            chosen = getattr(self, key)
            if chosen is None:
                continue
            if self.defences is None:
                raise bad(key, "says which models get the defences, but no defences are listed")
            for i, name in enumerate(chosen):
                if name not in grid:
                    raise bad(f"{key}[{i}]", f"must be one of the grid's {', '.join(map(repr, grid))}, got {name!r}")
        if not self.datasets:
            raise bad("datasets", "must list at least one dataset")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise bad("datasets", f"dataset names must be unique, got {names}")
        if not self.attacks and self.attack_preset is None:
            raise bad("attacks", "list at least one attack, or set attack_preset (paper, strong, adaptive)")
        if self.shard_size < 1:
            raise bad("shard_size", f"must be >= 1, got {self.shard_size}")
        if self.limit is not None and self.limit < 1:
            raise bad("limit", f"must be >= 1 or null, got {self.limit}")
        for arch, size in (self.image_size or {}).items():
            if arch not in ARCHS:
                raise bad(f"image_size.{arch}", f"unknown architecture ({', '.join(ARCHS)})")
            if size < 32:
                raise bad(f"image_size.{arch}", f"must be >= 32 px, got {size}")
        if self.workers < 1:
            raise bad("workers", f"must be >= 1, got {self.workers}")
        from medhpc.sweep.executors import EXECUTORS  # here: the registry imports the graph, which reads configs

        if self.executor not in EXECUTORS:
            raise bad("executor", f"must be one of {', '.join(map(repr, EXECUTORS))}, got {self.executor!r}")
        if self.executor == "slurm" and not self.profile:
            raise bad("profile", "the slurm executor needs a cluster profile file (see slurm/profiles/)")
        base = base_head().name
        for head in self.models.heads:
            spec = HEADS[head]
            if spec.on_base and base not in self.models.heads:
                raise bad("models.heads", f"{spec.title} heads train on a base model's backbone: include {base!r}")


def load_sweep(path: Path | str, overrides: dict[str, Any] | None = None, check_roots: bool = False) -> SweepConfig:
    """Read a YAML/TOML sweep config; ``overrides`` are dotted keys (``workers``, ``limit``).

    ``check_roots`` (what ``python -m medhpc.sweep run`` asks for) also applies
    :func:`check_data_roots`, so a missing dataset folder is refused before anything is
    submitted or written.
    """
    cfg = load(SweepConfig, path, overrides)
    if check_roots:
        check_data_roots(cfg, source=str(path))
    return cfg


def check_data_roots(cfg: SweepConfig, source: str = "<sweep>") -> None:
    """Raise :class:`ConfigError` naming ``datasets[i].root`` and ``source`` (the config
    file) when a dataset that still has to be prepared has no folder at its root.

    Checked only for the datasets whose prepare job would read ``root``: not synthetic ones
    (the sweep writes them under ``out``) and not those whose cache is already prepared. Not
    part of loading itself, because configs are also loaded where the data legitimately is
    not: ``status`` and ``report`` of a finished sweep whose raw data has moved, and tests
    that only expand the graph. (Jobs never reload the config: they are sent pickled.) The
    ``run`` command checks on the login node, where the driver runs and where the data
    has to be visible at the same path as on the compute nodes; without this, a missing root
    is found only when its prepare job runs, after a queue slot and with files under ``out``.
    """
    from medhpc.sweep.graph import prepare_job  # here: the graph module reads this one's types

    for i, ds in enumerate(cfg.datasets):
        if ds.synthetic is not None:
            continue
        job = prepare_job(cfg, ds)
        root = Path(ds.root)
        if root.is_dir() or job.is_done():
            continue
        what = "is not a folder" if root.exists() else "dataset folder does not exist"
        raise ConfigError(
            f"{source}: datasets[{i}].root: {what}: {root} (dataset {ds.name!r}, not synthetic, "
            f"its cache {job.cache} not prepared yet)"
        )
