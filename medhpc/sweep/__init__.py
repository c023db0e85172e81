"""Sweeps: a study's grid expanded into prepare / train / attack / evaluate / report jobs
named by their config hashes (see :mod:`medhpc.sweep.graph`).

Built so far: the typed config, the graph, the job functions (:mod:`medhpc.jobs`), the
in-process ``debug`` executor and the submitit driver (:mod:`medhpc.sweep.launch`; ``local``
tested, ``slurm`` through the cluster profiles of :mod:`medhpc.cluster`), and
``python -m medhpc.sweep run|status``. Still to come (issue 6): SLURM integration tests,
requeue on preemption, the kill-anywhere test and ``report`` (issue 7).
"""

from medhpc.sweep.config import DatasetSpec, ModelGrid, SweepConfig, SyntheticSpec, TrainSettings, load_sweep
from medhpc.sweep.graph import JobGraph, expand, job_key, split_sizes

__all__ = [
    "DatasetSpec",
    "JobGraph",
    "ModelGrid",
    "SweepConfig",
    "SyntheticSpec",
    "TrainSettings",
    "expand",
    "job_key",
    "load_sweep",
    "split_sizes",
]
