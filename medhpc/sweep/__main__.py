"""``python -m medhpc.sweep run|status|report CONFIG``: run a study's jobs, show what is done,
or (re)write and print the report from the stored results.

Executors: ``local`` (submitit subprocesses, ``workers`` at a time), ``slurm`` (submitit job
arrays with the config's cluster profile) and ``debug`` (in this process). A rerun skips
finished outputs and resubmits the rest; failed jobs are listed with their log paths and are
retried by running again. Exit status: 0 all done, 1 some jobs failed, 2 a bad config.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medhpc.errors import MedhpcError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medhpc.sweep", description=__doc__)
    parser.add_argument("command", choices=["run", "status", "report"])
    parser.add_argument("config", help="sweep config (.yaml, .yml or .toml)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")  # fmt: skip
    parser.add_argument("--executor", choices=["debug", "local", "slurm"], help="override the config's executor")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from medhpc.sweep.config import load_sweep
    from medhpc.sweep.launch import run_submitit
    from medhpc.sweep.run import failures, run_in_process, status
    from medhpc.train.__main__ import parse_set

    try:
        overrides = parse_set(args.sets)
        if args.executor:
            overrides["executor"] = args.executor
        cfg = load_sweep(args.config, overrides)
        if args.command == "report":
            return _report(cfg)
        if args.command == "run":
            if cfg.executor == "debug":
                run_in_process(cfg)
            else:
                run_submitit(cfg)
        for kind, c in status(cfg).items():
            sys.stdout.write(
                f"{kind:<9} {c['done']:>5} / {c['total']:<5} done  {c['running']:>4} running  {c['failed']:>4} failed\n"
            )
        failed = failures(cfg)
        for key, info in failed.items():
            sys.stdout.write(f"FAILED {key}: {info['error']}  (log: {info['stderr']})\n")
    except MedhpcError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 1 if failed else 0


def _report(cfg: object) -> int:
    """Write the report (tables, figures, index page) from the stored evaluations (every
    model's must be done) and print its short table."""
    from pathlib import Path

    from medhpc.jobs import is_done, run_job
    from medhpc.sweep.run import full_graph

    graph = full_graph(cfg)  # type: ignore[arg-type]
    keys = graph.by_kind("report")
    if not keys:
        raise MedhpcError("no report yet: not every dataset is prepared (python -m medhpc.sweep status)")
    job = graph.jobs[keys[0]]
    missing = [d for d in graph.deps[keys[0]] if not is_done(graph.jobs[d])]
    if missing:
        raise MedhpcError(f"{len(missing)} evaluations are not done yet (python -m medhpc.sweep status)")
    Path(job.output).unlink(missing_ok=True)  # always rewritten from the stored results
    out = Path(run_job(job))
    sys.stdout.write(out.with_suffix(".md").read_text() + f"\nreport: {out.parent / 'index.md'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
