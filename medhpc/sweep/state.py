"""The driver's record of a sweep: which jobs are running or failed, with their log paths.

``<out>/.sweep/jobs.json``, rewritten (atomically) by the submitit driver after every round;
``python -m medhpc.sweep status`` reads it. What is *done* is never recorded here: it is read
from the outputs (:meth:`medhpc.sweep.jobs.PrepareJob.is_done` and the like), so a lost or
stale record costs nothing but the running / failed counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medhpc import atomic

if TYPE_CHECKING:
    from medhpc.sweep.config import SweepConfig
    from medhpc.sweep.graph import JobGraph

STATE = Path(".sweep") / "jobs.json"


def state_path(cfg: SweepConfig) -> Path:
    """Where the sweep's record lives: ``<out>/.sweep/jobs.json``."""
    return Path(cfg.out) / STATE


def save_state(
    cfg: SweepConfig, graph: JobGraph, done: set[str], in_flight: dict[str, Any], failed: dict[str, Any]
) -> None:
    """Record the running jobs (submitit job id, log) and the failed ones (error, logs)."""
    jobs = {}
    for key in graph.jobs:
        if key in failed:
            jobs[key] = {"state": "failed", **failed[key]}
        elif key in in_flight:
            sub = in_flight[key]
            jobs[key] = {"state": "running", "job_id": str(sub.job_id), "stderr": str(sub.paths.stderr)}
    atomic.write_json({"executor": cfg.executor, "jobs": jobs}, state_path(cfg))


def read_state(cfg: SweepConfig) -> dict[str, Any]:
    """The last record's jobs by key (``{}`` before any driver ran)."""
    path = state_path(cfg)
    return json.loads(path.read_text())["jobs"] if path.is_file() else {}


__all__ = ["STATE", "read_state", "save_state", "state_path"]
