"""Sweeps: a study's grid expanded into prepare / train / attack / evaluate / report jobs
named by their config hashes (see :mod:`medhpc.sweep.graph`).

Built so far: the typed sweep config and its expansion into the job graph. The job runners,
the submitit executors (local, slurm, debug) and ``python -m medhpc.sweep run|status|report``
come next (issue 6).
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
