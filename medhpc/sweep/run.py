"""Run a sweep's jobs in this process, in dependency order (the ``debug`` executor), and report
what is done. The submitit executors (``local``, ``slurm``) build on the same graph and jobs.
"""

from __future__ import annotations

import logging
from collections import Counter

from medhpc.jobs import is_done, run_job
from medhpc.sweep.config import SweepConfig
from medhpc.sweep.graph import JobGraph, expand, split_sizes

log = logging.getLogger(__name__)


def full_graph(cfg: SweepConfig) -> JobGraph:
    """The graph as far as it is known now (attack jobs once every dataset is prepared)."""
    return expand(cfg, split_sizes(cfg))


def run_in_process(cfg: SweepConfig) -> JobGraph:
    """Run every job that is not done, one at a time; a rerun skips what is finished.

    Insertion order of the graph is a topological order, so one pass runs each stage after
    the ones it depends on; the second pass adds the attack, evaluate and report jobs whose
    shard ranges needed the prepared caches.
    """
    for graph in (expand(cfg), None):
        graph = graph or full_graph(cfg)
        for key, job in graph.jobs.items():
            log.info("%s: %s", key, "done" if is_done(job) else "running")
            run_job(job, device=cfg.device)
    return full_graph(cfg)


def status(cfg: SweepConfig) -> dict[str, dict[str, int]]:
    """Done and total jobs per kind, for the graph as far as it is known."""
    graph = full_graph(cfg)
    total = Counter(job.kind for job in graph.jobs.values())
    done = Counter(job.kind for job in graph.jobs.values() if is_done(job))
    return {kind: {"done": done[kind], "total": total[kind]} for kind in total}
