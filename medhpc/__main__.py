"""``python -m medhpc``: installation facts (``info``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medhpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, compiled kernels, backends per op, GPUs")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "info":
        from medhpc.info import collect, format_text

        facts = collect()
        sys.stdout.write((json.dumps(facts, indent=2) if args.json else format_text(facts)) + "\n")
        return 0
    return 2  # unreachable: argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
