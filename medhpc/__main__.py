"""``python -m medhpc``: installation facts (``info``), the node self-test (``selftest``) and shard
checks (``verify DIR``)."""

from __future__ import annotations

import argparse
import json
import sys

from medhpc.cli import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medhpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, compiled kernels, backends per op, GPUs")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    # The self-test parses its own options (python -m medhpc selftest --help): importing it here
    # would import torch, which `verify` must not (it starts in a fraction of a second).
    sub.add_parser(
        "selftest",
        add_help=False,
        help="check this node before a sweep: every op vs its reference, training, resume, attacks "
        "(--gpu, --json, --only NAME, --list)",
    )
    verify = sub.add_parser(
        "verify",
        help="check every shard under DIR: truncated, altered, missing, unverified, leftover temporaries",
        description="Verify the HDF5 shards under DIR (recursively). Prints one line per problem and a "
        "summary line; exits 0 when everything verifies, 1 when anything is wrong, 2 when DIR is not a folder.",
    )
    verify.add_argument("dir", help="folder of shards (a sweep's output tree)")
    verify.add_argument(
        "--checksums-only", action="store_true",
        help="skip reading every chunk; compare whole-file SHA-256 only (still detects any changed byte)",
    )  # fmt: skip
    verify.add_argument(
        "--ignore-tmp", action="store_true", help="do not report temporaries (while writers may be running)"
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "selftest":
        from medhpc.selftest.__main__ import main as selftest

        return selftest(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    setup_logging()

    if args.command == "info":
        from medhpc.info import collect, format_text

        facts = collect()
        sys.stdout.write((json.dumps(facts, indent=2) if args.json else format_text(facts)) + "\n")
        return 0
    if args.command == "verify":
        from medhpc.store import ShardError, verify_dir

        try:
            report = verify_dir(args.dir, read_data=not args.checksums_only, ignore_tmp=args.ignore_tmp)
        except ShardError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        sys.stdout.write("\n".join(report.lines()) + "\n")
        return 0 if report.ok else 1
    return 2  # unreachable: argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
