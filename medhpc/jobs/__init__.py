"""Job functions of a sweep: each runs one job of :mod:`medhpc.sweep.graph`, skips it when its
verified output exists, and writes through temporary files (safe to kill and rerun)."""

from medhpc.jobs.run import is_done, run_job

__all__ = ["is_done", "run_job"]
