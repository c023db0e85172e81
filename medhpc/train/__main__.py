"""``python -m medhpc.train CONFIG [--set key=value ...]``: train, keep the best model, evaluate.

Rerunning the same command resumes an interrupted run from its last epoch, or does nothing
for a finished one. Prints the run folder on success.
"""

from __future__ import annotations

import argparse
import sys

from medhpc.cli import add_set_argument, parse_set, run_main, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medhpc.train", description=__doc__)
    parser.add_argument("config", help="training config (.yaml, .yml or .toml)")
    add_set_argument(parser, "optim.lr=1e-3")
    parser.add_argument("--out", help="root folder for runs (overrides the config's out)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (overrides the config's device)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from medhpc.train.config import load_train_config
        from medhpc.train.loop import train

        overrides = parse_set(args.sets)
        if args.out:
            overrides["out"] = args.out
        if args.device:
            overrides["device"] = args.device
        cfg = load_train_config(args.config, overrides)
        run = train(cfg, progress=False if args.quiet else None)
        sys.stdout.write(f"{run}\n")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
