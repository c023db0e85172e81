"""``python -m medhpc.sweep run|status|report CONFIG``: run a study's jobs, show what is done,
or (re)write and print the report from the stored results.

Executors (:mod:`medhpc.sweep.executors`): ``local`` (submitit subprocesses, ``workers`` at a
time), ``slurm`` (submitit job arrays with the config's cluster profile) and ``debug`` (in this
process). A rerun skips finished outputs and resubmits the rest; failed jobs are listed with
their log paths and are retried by running again. Exit status: 0 all done, 1 some jobs failed,
2 a bad config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from medhpc.cli import add_set_argument, parse_set, run_main, setup_logging
from medhpc.errors import MedhpcError
from medhpc.sweep.executors import EXECUTORS

if TYPE_CHECKING:
    from medhpc.sweep.config import SweepConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medhpc.sweep", description=__doc__)
    parser.add_argument("command", choices=["run", "status", "report"])
    parser.add_argument("config", help="sweep config (.yaml, .yml or .toml)")
    add_set_argument(parser)
    parser.add_argument("--executor", choices=list(EXECUTORS), help="override the config's executor")
    parser.add_argument("--watch", action="store_true", help="status: refresh until every job is done (or Ctrl-C)")
    parser.add_argument(
        "--interval", type=float, default=5.0, metavar="S", help="status --watch: seconds between reads"
    )
    args = parser.parse_args(argv)
    setup_logging()
    return run_main(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    from medhpc.sweep.config import load_sweep
    from medhpc.sweep.progress import watch
    from medhpc.sweep.run import failures, status

    overrides = parse_set(args.sets)
    if args.executor:
        overrides["executor"] = args.executor
    cfg = load_sweep(args.config, overrides, check_roots=args.command == "run")
    if args.command == "report":
        return _report(cfg)
    if args.command == "run":
        EXECUTORS[cfg.executor](cfg)
    if args.command == "status" and args.watch:
        watch(lambda: status(cfg), args.interval)
    for kind, c in status(cfg).items():
        sys.stdout.write(
            f"{kind:<9} {c['done']:>5} / {c['total']:<5} done  {c['running']:>4} running  {c['queued']:>4} queued"
            f"  {c['failed']:>4} failed\n"
        )
    failed = failures(cfg)
    for key, info in failed.items():
        sys.stdout.write(f"FAILED {key}: {info['error']}  (log: {info['stderr']})\n")
    return 1 if failed else 0


def _report(cfg: SweepConfig) -> int:
    """Write the report (tables, figures, index page) from the stored evaluations (every
    model's must be done) and print its short table."""
    from medhpc.sweep.jobs import is_done, run_job
    from medhpc.sweep.run import full_graph

    graph = full_graph(cfg)
    keys = graph.by_kind("report")
    if not keys:
        raise MedhpcError("no report yet: not every dataset is prepared (python -m medhpc.sweep status)")
    job = graph.jobs[keys[0]]
    missing = [d for d in graph.deps[keys[0]] if not is_done(graph.jobs[d])]
    if missing:
        raise MedhpcError(f"{len(missing)} evaluations are not done yet (python -m medhpc.sweep status)")
    Path(job.output).unlink(missing_ok=True)  # always rewritten from the stored results
    out = Path(run_job(job))
    page, md = out.parent / "index.html", out.parent / "index.md"
    sys.stdout.write(out.with_suffix(".md").read_text() + f"\nreport: {page} (also {md})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
