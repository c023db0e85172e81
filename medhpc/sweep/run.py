"""Run a sweep's jobs in this process, in dependency order (the ``debug`` executor), and report
what is done. The submitit executors (``local``, ``slurm``: :mod:`medhpc.sweep.launch`) build
on the same graph and jobs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from medhpc.sweep.graph import JobGraph, expand, split_sizes
from medhpc.sweep.jobs import is_done, run_job
from medhpc.sweep.progress import count_stages
from medhpc.sweep.state import read_state

if TYPE_CHECKING:
    from medhpc.sweep.config import SweepConfig

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
    """Done, running, queued, failed and total jobs per kind, for the graph as far as it is known.

    Done is read from the outputs; running and failed from the last driver's record
    (``<out>/.sweep/jobs.json``, :mod:`medhpc.sweep.state`), where a job that is done since
    counts as done (:func:`medhpc.sweep.progress.count_stages`).
    """
    graph = full_graph(cfg)
    done = [key for key, job in graph.jobs.items() if is_done(job)]
    return count_stages({key: job.kind for key, job in graph.jobs.items()}, done, read_state(cfg))


def failures(cfg: SweepConfig) -> dict[str, dict[str, str]]:
    """The failed jobs of the last driver run that are still not done, with their log paths."""
    graph = full_graph(cfg)
    return {
        k: v for k, v in read_state(cfg).items()
        if v["state"] == "failed" and k in graph.jobs and not is_done(graph.jobs[k])
    }  # fmt: skip
