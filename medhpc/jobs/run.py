"""Run one sweep job; recognise a finished one from its output alone.

Each job writes its output atomically and last, so "done" is a property of the file system:
a prepared cache that opens, a training run's ``metrics.json`` with its hash, a shard whose
checksum verifies, an evaluation or report JSON. Jobs own no orchestration: the executors of
:mod:`medhpc.sweep` decide what runs when and where.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medhpc import __version__, atomic
from medhpc.config import config_hash
from medhpc.sweep.graph import AttackJob, EvaluateJob, Job, PrepareJob, ReportJob, TrainJob

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
    return Path(job.output).is_file()


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
        _evaluate(job)
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
    from medhpc.train.checkpoint import load_model
    from medhpc.train.loop import resolve_device

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


def _rows(shard_sets: tuple[str, ...]) -> list[dict[str, Any]]:
    """One robustness row per shard set, built as :func:`evaluate_robustness` builds its rows."""
    from medhpc.attacks.robustness import _row
    from medhpc.store import ShardReader

    rows = []
    for folder in shard_sets:
        reader = ShardReader(folder, verify=True, strict=True)
        f = reader.read(["labels", "adv_pred", "success", "l2", "linf"])
        ok = f["success"].astype(np.float64)
        l2, linf = f["l2"].astype(np.float64), f["linf"].astype(np.float64)
        totals = {
            "n": float(ok.size), "correct": float(np.sum(f["adv_pred"] == f["labels"])), "success": ok.sum(),
            "l2": l2.sum(), "linf": linf.sum(), "l2_success": (l2 * ok).sum(), "linf_success": (linf * ok).sum(),
        }  # fmt: skip
        rows.append({**_row(reader.attack, totals), "shards": folder})
    return rows


def _evaluate(job: EvaluateJob) -> None:
    from medhpc.attacks.robustness import masking_warnings

    rows = _rows(job.shard_sets)
    warnings = masking_warnings(rows)
    for w in warnings:
        log.warning("%s: gradient-masking sign (%s): %s", job.run, w["kind"], w["message"])
    atomic.write_json(
        {"run": job.run, "medhpc_version": __version__, "n": rows[0]["n"] if rows else 0,
         "attacks": rows, "warnings": warnings},
        job.output,
    )  # fmt: skip


def _report(job: ReportJob) -> None:
    """The summary every later report builds on: accuracy per model and attack (JSON + Markdown)."""
    models = []
    for path in job.evaluations:
        ev = json.loads(Path(path).read_text())
        run = Path(ev["run"])
        metrics = json.loads((run / "metrics.json").read_text())
        models.append({"run": str(run), "arch": metrics["arch"], "head": metrics["head"],
                       "clean_test": metrics["test"], "attacks": ev["attacks"], "warnings": ev["warnings"]})  # fmt: skip
    atomic.write_json({"medhpc_version": __version__, "models": models}, job.output)
    names = list(dict.fromkeys(r["name"] for m in models for r in m["attacks"]))
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in models:
        acc = {r["name"]: f"{r['accuracy']:.3f}" for r in m["attacks"]}
        lines.append(f"| {Path(m['run']).name} | " + " | ".join(acc.get(n, "") for n in names) + " |")
    atomic.write_text("\n".join(lines) + "\n", Path(job.output).with_suffix(".md"))
