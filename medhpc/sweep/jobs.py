"""The jobs of a sweep: what each one computes, where its output goes, how a finished one is known.

prepare -> train -> attack (one shard) -> evaluate (one model) -> report. Every job is a
frozen dataclass named ``<kind>-<config hash>`` (:func:`job_key`) with

* ``output``: the path it writes, which follows from its config;
* ``is_done()``: whether that output exists and checks out — a prepared cache that opens, a
  training run's ``metrics.json`` with its hash, a shard whose checksum verifies, an evaluation
  or report JSON of the current format (nothing is recomputed to decide);
* ``execute(device, progress)``: compute it. Each job writes its output atomically and last,
  so "done" is a property of the file system and a job killed anywhere is simply rerun.

:func:`run_job` (what every executor calls, and what submitit pickles by name) skips a done
job and executes the others. Jobs own no orchestration: :mod:`medhpc.sweep.graph` says which
jobs a study has, the executors (:mod:`medhpc.sweep.executors`) when and where they run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medhpc.attacks.config import AttackConfig
from medhpc.config import config_hash
from medhpc.report.config import ReportSettings
from medhpc.train.config import TrainConfig
from medhpc.train.loop import run_dir

if TYPE_CHECKING:  # the sweep's config is only read, never needed to run a job
    from medhpc.sweep.config import DatasetSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareJob:
    """Write the synthetic stand-in (if asked) and prepare the dataset's cache."""

    dataset: DatasetSpec
    data_root: str
    cache: str

    kind = "prepare"

    @property
    def output(self) -> str:
        return self.cache

    def is_done(self) -> bool:
        from medhpc.data.cache import cache_info
        from medhpc.errors import MedhpcError

        if not Path(self.cache).is_file():
            return False
        try:
            cache_info(self.cache)
        except (MedhpcError, OSError):
            return False
        return True

    def execute(self, device: str = "auto", progress: bool | None = False) -> None:
        import importlib

        from medhpc.data import make_synthetic
        from medhpc.data.synth import SYNTH_RECORD

        ds = self.dataset
        if ds.synthetic is not None:
            # The sweep owns this folder: generate beside it and rename into place when complete,
            # so a job killed mid-way leaves no half-written dataset (make_synthetic, rightly,
            # refuses to write into a non-empty folder it did not finish).
            s = ds.synthetic
            root = Path(self.data_root)
            if not (root / SYNTH_RECORD).is_file():
                partial = root.with_name(root.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                make_synthetic(ds.kind, partial, n=s.n, size=s.size, seed=s.seed, lesion_contrast=s.lesion_contrast,
                               lesions=s.lesions)  # fmt: skip
                shutil.rmtree(root, ignore_errors=True)
                os.replace(partial, root)
        prepare = importlib.import_module("medhpc.data.prepare").prepare
        prepare(ds.kind, self.data_root, self.cache, size=ds.size, seed=ds.seed, fractions=ds.fractions,
                compression=ds.compression, progress=False, ignore_unknown=ds.ignore_unknown)  # fmt: skip


@dataclass(frozen=True)
class TrainJob:
    """One :func:`medhpc.train.train` run."""

    config: TrainConfig
    dataset: str

    kind = "train"

    @property
    def run(self) -> Path:
        return run_dir(self.config)

    @property
    def output(self) -> str:
        return str(self.run)

    def is_done(self) -> bool:
        metrics = self.run / "metrics.json"
        return metrics.is_file() and json.loads(metrics.read_text()).get("config_hash") == config_hash(self.config)

    def execute(self, device: str = "auto", progress: bool | None = False) -> None:
        from medhpc.train import train

        train(self.config, progress=progress)  # the device is the training config's


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

    @property
    def output(self) -> str:
        return self.shard

    def is_done(self) -> bool:
        from medhpc.store import verify_shard

        return Path(self.shard).is_file() and not verify_shard(self.shard)

    def execute(self, device: str = "auto", progress: bool | None = False) -> None:
        from medhpc.device import resolve_device
        from medhpc.models.checkpoint import load_model
        from medhpc.sweep.produce import attack_to_shard, cache_batches

        dev = resolve_device(device)
        model, train_cfg = load_model(self.run, dev)
        Path(self.shard).parent.mkdir(parents=True, exist_ok=True)
        detector = self.detector(model, dev) if self.attack.spec.calibrated else None
        batches = cache_batches(self.cache, self.split, self.start, self.stop, batch_size=32, device=dev,
                                image_size=self.image_size)  # fmt: skip
        attack_to_shard(
            self.shard, model, batches, self.attack, start=self.start, split=self.split, seed=self.seed,
            model_config=train_cfg["model"], run=self.run, dataset=self.cache, set_size=self.set_size,
            device=dev, config_hash=self.set_hash, detector=detector,
        )  # fmt: skip

    @property
    def detector_file(self) -> Path:
        """Where the shard set's detector is kept: fitted once, read by every slice of the set."""
        return Path(self.shard).parent / "detector.json"

    def detector(self, model: Any, device: Any) -> Any:
        """The detector this set's attack is against, fitted on the clean images of the cache's
        validation split under the sweep's seed (:func:`medhpc.attacks.detector.calibrate`).

        The first slice fits it and writes ``detector.json`` beside its shard; the others read
        it, so every shard of the set attacks one threshold (the report checks they agree).
        """
        from medhpc import atomic
        from medhpc.attacks.detector import Detector, calibrate
        from medhpc.sweep.produce import cache_batches

        path, a = self.detector_file, self.attack
        if path.is_file():
            try:
                det = Detector.from_dict(json.loads(path.read_text()), source=str(path))
            except ValueError as exc:
                raise ValueError(f"{path} is damaged ({exc}); delete it to fit the detector again") from None
            if (det.score, det.fpr, det.target_quantile, det.seed) == (a.score, a.fpr, a.target_quantile, self.seed):
                return det
            raise ValueError(f"{path} holds a detector for other settings than {a.name}; delete it to refit")
        val = cache_batches(self.cache, "val", batch_size=32, device=device, image_size=self.image_size)
        assert a.score is not None and a.fpr is not None and a.target_quantile is not None
        det = calibrate(model, val, score=a.score, fpr=a.fpr, target_quantile=a.target_quantile, seed=self.seed)
        atomic.write_json(det.to_dict(), path)
        log.info("%s: %s above %.6g rejects %d of %d clean val images (fpr %g)", a.name, det.score,
                 det.threshold, det.rejected, det.n, det.fpr)  # fmt: skip
        return det


def _recorded(job: EvaluateJob | ReportJob, fmt: int) -> dict[str, Any] | None:
    """The JSON a finished evaluation or report wrote, if it is of this format and this job;
    one of an older layout, or of other settings, is redone."""
    try:
        data = json.loads(Path(job.output).read_text())
    except (OSError, ValueError):
        return None
    if data.get("format") != fmt or data.get("job") != job_key(job):
        return None
    return data


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

    def is_done(self) -> bool:
        from medhpc.report.analyse import EVAL_FORMAT

        return _recorded(self, EVAL_FORMAT) is not None

    def execute(self, device: str = "auto", progress: bool | None = False) -> None:
        from medhpc.report.analyse import evaluate_model

        evaluate_model(self.run, self.shard_sets, self.output, dataset=self.dataset, cache=self.cache,
                       split=self.split, image_size=self.image_size, settings=self.settings, device=device,
                       job=job_key(self))  # fmt: skip


@dataclass(frozen=True)
class ReportJob:
    """The sweep's report over every evaluated model (:func:`medhpc.report.build.build_report`);
    ``output`` is its ``summary.json``, written last."""

    evaluations: tuple[str, ...]
    output: str
    name: str
    settings: ReportSettings

    kind = "report"

    def is_done(self) -> bool:
        """Written by this job, and from the evaluations as they are now."""
        from medhpc.report.build import REPORT_FORMAT, input_digest

        data = _recorded(self, REPORT_FORMAT)
        if data is None:
            return False
        inputs, digests = data.get("inputs", {}), data.get("input_digests", {})
        for path in self.evaluations:
            try:
                if json.loads(Path(path).read_text()).get("job") != inputs.get(path):
                    return False
                if input_digest(path) != digests.get(path):  # redone under the same job name
                    return False
            except (OSError, ValueError):
                return False
        return True

    def execute(self, device: str = "auto", progress: bool | None = False) -> None:
        from medhpc.report.build import build_report

        build_report(self.evaluations, Path(self.output).parent, name=self.name, settings=self.settings,
                     job=job_key(self))  # fmt: skip


Job = PrepareJob | TrainJob | AttackJob | EvaluateJob | ReportJob


def job_key(job: Job) -> str:
    """``<kind>-<hash>``: the job's name in logs, status and the executor's folders."""
    return f"{job.kind}-{config_hash(job)}"


def is_done(job: Job) -> bool:
    """Whether the job's output exists and checks out (nothing is recomputed to decide)."""
    return job.is_done()


def run_job(job: Job, device: str = "auto", progress: bool | None = False) -> str:
    """Run ``job`` unless it is done; returns its output path."""
    if job.is_done():
        log.info("%s: done earlier", job.output)
        return job.output
    job.execute(device, progress)
    return job.output


__all__ = [
    "AttackJob",
    "EvaluateJob",
    "Job",
    "PrepareJob",
    "ReportJob",
    "TrainJob",
    "is_done",
    "job_key",
    "run_job",
]
