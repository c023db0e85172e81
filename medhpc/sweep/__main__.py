"""``python -m medhpc.sweep run|status CONFIG``: run a study's jobs, or show what is done.

This first version runs jobs in this process (``--executor debug``); the submitit executors
(``local`` with several workers, ``slurm`` job arrays) are being built (issue 6).
"""

from __future__ import annotations

import argparse
import logging
import sys

from medhpc.errors import MedhpcError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medhpc.sweep", description=__doc__)
    parser.add_argument("command", choices=["run", "status"])
    parser.add_argument("config", help="sweep config (.yaml, .yml or .toml)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")  # fmt: skip
    parser.add_argument("--executor", choices=["debug", "local", "slurm"], help="override the config's executor")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from medhpc.sweep.config import load_sweep
    from medhpc.sweep.run import run_in_process, status
    from medhpc.train.__main__ import parse_set

    try:
        overrides = parse_set(args.sets)
        if args.executor:
            overrides["executor"] = args.executor
        cfg = load_sweep(args.config, overrides)
        if args.command == "run":
            if cfg.executor != "debug":
                raise MedhpcError(
                    f"executor {cfg.executor!r} is not available yet; run with --executor debug (in this process)"
                )
            run_in_process(cfg)
        for kind, counts in status(cfg).items():
            sys.stdout.write(f"{kind:<9} {counts['done']:>5} / {counts['total']:<5} done\n")
    except MedhpcError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
