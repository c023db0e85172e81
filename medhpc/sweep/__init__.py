"""Sweeps: a study's grid (datasets x architectures x heads x beta x attacks) run as prepare /
train / attack / evaluate / report jobs, each named by its config hash, so that a rerun after
any interruption does only what is missing.

Where each concern lives:

* :mod:`~medhpc.sweep.config` — :class:`SweepConfig`, the typed study file (:func:`load_sweep`);
* :mod:`~medhpc.sweep.graph` — :func:`expand`: the config into its jobs and their dependencies;
* :mod:`~medhpc.sweep.jobs` — the job types: each one's output, ``is_done`` and ``execute``;
  :func:`~medhpc.sweep.jobs.run_job` and :func:`job_key`;
* :mod:`~medhpc.sweep.produce` — the attack job's core: an attack over batches into one shard
  (:mod:`medhpc.store` writes and checks it);
* :mod:`~medhpc.sweep.state` — the driver's record of running and failed jobs;
* :mod:`~medhpc.sweep.executors` — the executors by name (``debug``, ``local``, ``slurm``);
* :mod:`~medhpc.sweep.launch` — the submitit driver (``local`` and ``slurm``) and the
  requeue-on-preemption job runner;
* :mod:`~medhpc.sweep.run` — the in-process ``debug`` executor, ``status`` and ``failures``;
* :mod:`~medhpc.sweep.cluster` — cluster profiles: what each kind of job asks SLURM for;
* :mod:`~medhpc.sweep.__main__` — ``python -m medhpc.sweep run|status|report CONFIG``.
"""

from medhpc.sweep.config import DatasetSpec, ModelGrid, SweepConfig, SyntheticSpec, TrainSettings, load_sweep
from medhpc.sweep.graph import JobGraph, expand, split_sizes
from medhpc.sweep.jobs import job_key

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
