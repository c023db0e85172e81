"""``python -m medhpc.train CONFIG [--set key=value ...]``: train, keep the best model, evaluate.

Rerunning the same command resumes an interrupted run from its last epoch, or does nothing
for a finished one. Prints the run folder on success.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import yaml

from medhpc.errors import MedhpcError


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key.sub=value`` pairs; values are parsed as YAML (numbers, true/false, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MedhpcError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medhpc.train", description=__doc__)
    parser.add_argument("config", help="training config (.yaml, .yml or .toml)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--out", help="root folder for runs (overrides the config's out)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (overrides the config's device)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from medhpc.train.config import load_train_config
    from medhpc.train.loop import train

    try:
        overrides = parse_set(args.sets)
        if args.out:
            overrides["out"] = args.out
        if args.device:
            overrides["device"] = args.device
        cfg = load_train_config(args.config, overrides)
        run = train(cfg, progress=False if args.quiet else None)
    except MedhpcError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(f"{run}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
