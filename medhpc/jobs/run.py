"""Run one sweep job; recognise a finished one from its output alone.

Each job writes its output atomically and last, so "done" is a property of the file system:
a prepared cache that opens, a training run's ``metrics.json`` with its hash, a shard whose
checksum verifies, an evaluation or report JSON of the current format. Jobs own no orchestration: the executors of
:mod:`medhpc.sweep` decide what runs when and where.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from medhpc.config import config_hash
from medhpc.sweep.graph import AttackJob, EvaluateJob, Job, PrepareJob, ReportJob, TrainJob, job_key

log = logging.getLogger(__name__)


def is_done(job: Job) -> bool:
    """Whether the job's output exists and checks out (nothing is recomputed to decide)."""
    if isinstance(job, PrepareJob):
        from medhpc.data.cache import cache_info
        from medhpc.errors import MedhpcError

        if not Path(job.cache).is_file():
            return False
        try:
            cache_info(job.cache)
        except (MedhpcError, OSError):
            return False
        return True
    if isinstance(job, TrainJob):
        metrics = job.run / "metrics.json"
        return metrics.is_file() and json.loads(metrics.read_text()).get("config_hash") == config_hash(job.config)
    if isinstance(job, AttackJob):
        from medhpc.store import verify_shard

        return Path(job.shard).is_file() and not verify_shard(job.shard)
    # An evaluation or report of an older layout, or of other settings, is redone.
    from medhpc.report.analyse import EVAL_FORMAT
    from medhpc.report.build import REPORT_FORMAT

    want = EVAL_FORMAT if isinstance(job, EvaluateJob) else REPORT_FORMAT
    try:
        data = json.loads(Path(job.output).read_text())
    except (OSError, ValueError):
        return False
    if data.get("format") != want or data.get("job") != job_key(job):
        return False
    if isinstance(job, ReportJob):  # and it was built from the evaluations as they are now
        inputs = data.get("inputs", {})
        for path in job.evaluations:
            try:
                if json.loads(Path(path).read_text()).get("job") != inputs.get(path):
                    return False
            except (OSError, ValueError):
                return False
    return True


def run_job(job: Job, device: str = "auto", progress: bool | None = False) -> str:
    """Run ``job`` unless it is done; returns its output path."""
    if is_done(job):
        log.info("%s: done earlier", _output(job))
        return _output(job)
    if isinstance(job, PrepareJob):
        _prepare(job)
    elif isinstance(job, TrainJob):
        from medhpc.train import train

        train(job.config, progress=progress)
    elif isinstance(job, AttackJob):
        _attack(job, device)
    elif isinstance(job, EvaluateJob):
        _evaluate(job, device)
    else:
        _report(job)
    return _output(job)


def _output(job: Job) -> str:
    if isinstance(job, PrepareJob):
        return job.cache
    if isinstance(job, TrainJob):
        return str(job.run)
    if isinstance(job, AttackJob):
        return job.shard
    return job.output


def _prepare(job: PrepareJob) -> None:
    import importlib

    from medhpc.data import make_synthetic
    from medhpc.data.synth import SYNTH_RECORD

    ds = job.dataset
    if ds.synthetic is not None:
        # The sweep owns this folder: generate beside it and rename into place when complete,
        # so a job killed mid-way leaves no half-written dataset (make_synthetic, rightly,
        # refuses to write into a non-empty folder it did not finish).
        s = ds.synthetic
        root = Path(job.data_root)
        if not (root / SYNTH_RECORD).is_file():
            partial = root.with_name(root.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            make_synthetic(ds.kind, partial, n=s.n, size=s.size, seed=s.seed, lesion_contrast=s.lesion_contrast)
            shutil.rmtree(root, ignore_errors=True)
            os.replace(partial, root)
    prepare = importlib.import_module("medhpc.data.prepare").prepare
    prepare(ds.kind, job.data_root, job.cache, size=ds.size, seed=ds.seed, fractions=ds.fractions,
            compression=ds.compression, progress=False)  # fmt: skip


def _attack(job: AttackJob, device: str) -> None:
    from medhpc.store import attack_to_shard, cache_batches
    from medhpc.models.checkpoint import load_model
    from medhpc.device import resolve_device

    dev = resolve_device(device)
    model, train_cfg = load_model(job.run, dev)
    Path(job.shard).parent.mkdir(parents=True, exist_ok=True)
    batches = cache_batches(job.cache, job.split, job.start, job.stop, batch_size=32, device=dev,
                            image_size=job.image_size)  # fmt: skip
    attack_to_shard(
        job.shard, model, batches, job.attack, start=job.start, split=job.split, seed=job.seed,
        model_config=train_cfg["model"], run=job.run, dataset=job.cache, set_size=job.set_size,
        device=dev, config_hash=job.set_hash,
    )  # fmt: skip


def _evaluate(job: EvaluateJob, device: str) -> None:
    from medhpc.report.analyse import evaluate_model

    evaluate_model(job.run, job.shard_sets, job.output, dataset=job.dataset, cache=job.cache, split=job.split,
                   image_size=job.image_size, settings=job.settings, device=device, job=job_key(job))  # fmt: skip


def _report(job: ReportJob) -> None:
    from medhpc.report.build import build_report

    build_report(job.evaluations, Path(job.output).parent, name=job.name, settings=job.settings, job=job_key(job))
