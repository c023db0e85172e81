"""Run a sweep through submitit: ``local`` (subprocesses on this machine, ``workers`` at a
time) or ``slurm`` (job arrays on a cluster profile), with the driver in this process.

The driver repeatedly (1) expands the graph as far as it is known, (2) submits every job whose
dependencies are done and that is neither done, in flight nor failed, (3) polls what is in
flight. Finished outputs are recognised on disk (:func:`medhpc.sweep.jobs.is_done`), so a driver
killed at any moment is simply started again: it skips what is done and resubmits the rest.
A failed job is recorded with its log paths in ``<out>/.sweep/jobs.json``
(:mod:`medhpc.sweep.state`) and blocks only the jobs that depend on it; ``status`` reads that file.

The two submitit executors differ only in how one kind of job's submitit executor is made and
in how many jobs are kept in flight: :data:`SUBMITIT` says both, per executor name, and the
registry of every executor (:data:`medhpc.sweep.executors.EXECUTORS`) takes its submitit names
from there.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medhpc.cli import setup_logging
from medhpc.errors import MedhpcError
from medhpc.sweep.graph import JobGraph
from medhpc.sweep.jobs import is_done, run_job
from medhpc.sweep.progress import Progress, count_stages
from medhpc.sweep.run import full_graph
from medhpc.sweep.state import save_state

if TYPE_CHECKING:
    from medhpc.sweep.config import SweepConfig

log = logging.getLogger(__name__)


class JobRunner:
    """``run_job`` as submitit runs it: checkpointable, so a job that SLURM preempts or that
    reaches its time limit is requeued with the same call (up to the profile's
    ``max_requeues``) and resumes from its own progress: a training run from ``last.pt``,
    the other (short) jobs from the start, their outputs being written atomically.

    ``threads``: torch's intra-op CPU threads in the job's process (None: torch's default, one
    per core it may use), see :func:`job_threads`."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def __call__(self, job: Any, device: str) -> str:
        # A job runs in a fresh process: give its log (submitit's *_log.err) medhpc's INFO lines.
        setup_logging()
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        return run_job(job, device=device)

    def checkpoint(self, job: Any, device: str) -> Any:
        import submitit

        log.warning("%s: interrupted; requeued to resume from its checkpoint", type(job).__name__)
        return submitit.helpers.DelayedSubmission(self, job, device)


def _local_executor(cfg: SweepConfig, folder: Path, kind: str) -> Any:
    import submitit

    executor = submitit.AutoExecutor(folder, cluster="local")
    executor.update_parameters(timeout_min=24 * 60)
    return executor


def _slurm_executor(cfg: SweepConfig, folder: Path, kind: str) -> Any:
    from medhpc.sweep.cluster import load_profile, make_executor

    if cfg.profile is None:  # validated in the config; here for the type checker
        raise MedhpcError("the slurm executor needs a cluster profile")
    return make_executor(load_profile(cfg.profile), folder, kind, "slurm")  # type: ignore[arg-type]


@dataclass(frozen=True)
class Submitit:
    """How the driver uses one submitit executor.

    ``make(cfg, folder, kind)`` builds the submitit executor of one kind of job (its logs go
    to ``folder``); ``bounded``: at most ``cfg.workers`` jobs in flight (on this machine), else
    every ready job is submitted at once (the cluster's scheduler queues them).
    """

    make: Callable[[SweepConfig, Path, str], Any]
    bounded: bool


#: The submitit executors by name.
SUBMITIT: dict[str, Submitit] = {
    "local": Submitit(_local_executor, bounded=True),
    "slurm": Submitit(_slurm_executor, bounded=False),
}


def job_threads(cfg: SweepConfig, backend: Submitit) -> int | None:
    """CPU threads per job for executors that run ``workers`` jobs side by side on this
    machine: its cores shared out, at least one each; None (torch's default) on a cluster,
    where each job has its own allocation.

    Left to torch, every one of the ``workers`` processes starts a thread per core: on a
    2-core machine two jobs run four busy threads on two cores, and PyTorch's threads then
    wait for each other (a ResNet50 step measured 2-7 times slower than with one thread each).
    """
    if not backend.bounded:
        return None
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // cfg.workers)


def _backend(cfg: SweepConfig) -> Submitit:
    try:
        return SUBMITIT[cfg.executor]
    except KeyError:
        raise MedhpcError(
            f"executor {cfg.executor!r} does not run through submitit (those that do: {', '.join(SUBMITIT)})"
        ) from None


def run_submitit(cfg: SweepConfig, poll_s: float = 1.0, deadline_s: float | None = None) -> dict[str, Any]:
    """Drive the sweep to completion (or until only failed or blocked jobs remain).

    Returns ``{"done": n, "failed": {key: {...}}, "blocked": [keys]}``. ``deadline_s`` bounds
    the whole run (tests); None waits as long as jobs are in flight.
    """
    backend = _backend(cfg)
    started = time.monotonic()
    progress = Progress()
    try:
        return _drive(cfg, backend, poll_s, deadline_s, started, progress)
    finally:
        progress.close()


def _drive(
    cfg: SweepConfig, backend: Submitit, poll_s: float, deadline_s: float | None, started: float, progress: Progress
) -> dict[str, Any]:
    """The driver's loop (:func:`run_submitit`), showing the counts after every round."""
    done: set[str] = set()
    failed: dict[str, dict[str, Any]] = {}
    in_flight: dict[str, Any] = {}
    executors: dict[str, Any] = {}
    runner = JobRunner(job_threads(cfg, backend))
    graph: JobGraph = full_graph(cfg)
    while True:
        graph = full_graph(cfg)
        for key, job in graph.jobs.items():
            if key not in done and key not in in_flight and key not in failed and is_done(job):
                done.add(key)
        blocked = _blocked(graph, failed)
        ready = [
            k for k in graph.jobs
            if k not in done and k not in in_flight and k not in failed and k not in blocked
            and all(d in done for d in graph.deps[k])
        ]  # fmt: skip
        room = cfg.workers - len(in_flight) if backend.bounded else len(ready)
        by_kind: dict[str, list[str]] = defaultdict(list)
        for key in ready[: max(room, 0)]:
            by_kind[graph.jobs[key].kind].append(key)
        for kind, keys in by_kind.items():
            folder = Path(cfg.out) / "submitit" / kind
            executor = executors.get(kind) or executors.setdefault(kind, backend.make(cfg, folder, kind))
            executor.update_parameters(name=f"medhpc-{kind}")
            with executor.batch():  # one job array per kind on SLURM
                jobs = [executor.submit(runner, graph.jobs[k], cfg.device) for k in keys]
            for key, sub in zip(keys, jobs, strict=True):
                in_flight[key] = sub
                log.info("%s: submitted as %s", key, sub.job_id)
        save_state(cfg, graph, done, in_flight, failed)
        recorded = {**dict.fromkeys(in_flight, {"state": "running"}), **dict.fromkeys(failed, {"state": "failed"})}
        progress.update(count_stages({k: j.kind for k, j in graph.jobs.items()}, done, recorded))
        if not in_flight and not ready[: max(room, 0)]:
            break
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            raise MedhpcError(f"sweep {cfg.name}: not finished after {deadline_s:.0f} s ({len(in_flight)} in flight)")
        time.sleep(poll_s)
        for key, sub in list(in_flight.items()):
            if not sub.done():
                continue
            del in_flight[key]
            error = sub.exception()
            if error is None and is_done(graph.jobs[key]):
                done.add(key)
                continue
            failed[key] = {
                "job_id": str(sub.job_id),
                "error": _summary(error),
                "stdout": str(sub.paths.stdout),
                "stderr": str(sub.paths.stderr),
            }
            log.error("%s failed (%s); log: %s", key, failed[key]["error"], failed[key]["stderr"])
    blocked = _blocked(graph, failed)
    save_state(cfg, graph, done, in_flight, failed)
    return {"done": len(done), "failed": failed, "blocked": sorted(blocked)}


#: submitit's words for a job that ended without a result (killed, cancelled, out of time or
#: memory): ``Job N (task: T) with path P`` then this line, then the job's error stream.
_NO_OUTPUT = re.compile(r"has not produced any output \(state: ([^)]*)\)")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
#: What SLURM writes into a job's error stream when it ends the job (``*** JOB 12 ON n1
#: CANCELLED AT 2026-12-01T10:00:00 DUE TO TIME LIMIT ***``).
_SLURM_END = re.compile(r"^slurmstepd: error: \*\*\* (.+?) \*\*\*$")


def _summary(error: BaseException | None) -> str:
    """One line for a failed job: the exception line of its traceback (submitit appends log
    paths after it); for a job that ended without any result, submitit's reason with the
    job's state (``job has not produced any output (state: CANCELLED)``), followed by what SLURM or the job's last
    exception said in its error stream, if anything."""
    if error is None:
        return "finished without its output"
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last_exception = next((line for line in reversed(lines) if _EXCEPTION.match(line)), None)
    no_output = _NO_OUTPUT.search(text)
    if no_output is None:
        return last_exception or (lines[0] if lines else type(error).__name__)
    summary = f"job {no_output.group(0)}"
    ended = next((m.group(1) for line in reversed(lines) if (m := _SLURM_END.match(line))), None)
    cause = ended or last_exception
    return f"{summary}: {cause}" if cause else summary


def _blocked(graph: JobGraph, failed: dict[str, Any]) -> set[str]:
    """Jobs that wait, directly or not, on a failed job."""
    blocked: set[str] = set()
    for key in graph.jobs:  # insertion order is topological
        if any(d in failed or d in blocked for d in graph.deps[key]):
            blocked.add(key)
    return blocked
