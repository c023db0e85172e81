"""Executors by name, in one place: how ``python -m medhpc.sweep run`` runs a sweep.

* ``debug`` — every job in this process, one at a time (:func:`medhpc.sweep.run.run_in_process`);
* ``local`` — submitit subprocesses on this machine, ``workers`` at a time;
* ``slurm`` — submitit job arrays with the config's cluster ``profile``.

The submitit ones are driven by :func:`medhpc.sweep.launch.run_submitit`, which makes each
kind of job's submitit executor as :data:`medhpc.sweep.launch.SUBMITIT` says for that name
(the driver, which tests also call directly, needs that table without this registry).
:data:`EXECUTORS`' names are what the config's ``executor`` and ``--executor`` accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medhpc.sweep.launch import SUBMITIT, run_submitit
from medhpc.sweep.run import run_in_process

if TYPE_CHECKING:
    from medhpc.sweep.config import SweepConfig

#: Executor name -> what runs a whole sweep with it (to completion, or until only failed jobs
#: and the jobs they block remain).
EXECUTORS: dict[str, Callable[[SweepConfig], Any]] = {
    "debug": run_in_process,
    **dict.fromkeys(SUBMITIT, run_submitit),
}


__all__ = ["EXECUTORS"]
