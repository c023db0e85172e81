"""``python -m medhpc.data``: make synthetic datasets and prepare caches.

Errors caused by the user's data or options print one line (no traceback)
and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from medhpc.cli import setup_logging
from medhpc.data.errors import DataError
from medhpc.data.prepare import COMPRESSIONS, prepare
from medhpc.data.readers import KINDS
from medhpc.data.split import DEFAULT_FRACTIONS, parse_fractions
from medhpc.data.synth import SYNTH_KINDS, make_synthetic
from medhpc.errors import MedhpcError

log = logging.getLogger(__name__)

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medhpc.data", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    syn = sub.add_parser("synth", help="write a synthetic dataset in a real dataset's layout")
    syn.add_argument("--kind", required=True, choices=SYNTH_KINDS)
    syn.add_argument("--n", type=int, required=True, help="number of labelled images")
    syn.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    syn.add_argument("--out", required=True, help="output folder (missing or empty)")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--lesion-contrast", type=float, default=None, help="lesion strength (default: tuned)")
    syn.add_argument("--lesions", type=int, default=None, help="lesion count scale (default: tuned)")
    syn.add_argument("--workers", type=int, default=os.cpu_count() or 1)

    prep = sub.add_parser("prepare", help="split a dataset and decode it into an HDF5 cache")
    prep.add_argument("--kind", required=True, choices=sorted(KINDS))
    prep.add_argument("--root", required=True, help="dataset folder")
    prep.add_argument("--size", type=int, default=224)
    prep.add_argument("--out", required=True, help="cache file, e.g. cache.h5")
    prep.add_argument("--seed", type=int, default=0, help="split seed")
    prep.add_argument("--fractions", default=",".join(map(str, DEFAULT_FRACTIONS)),
                      help="train,val,test fractions (default %(default)s)")
    prep.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    prep.add_argument("--skip-bad", action="store_true", help="skip undecodable images and report them")
    prep.add_argument("--ignore-unknown", action="store_true",
                      help="leave out (and log) folders and files the reader does not know, "
                           "e.g. a COVID/ class in a Kermany split, instead of stopping")
    prep.add_argument("--compression", choices=COMPRESSIONS, default="lzf")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input or usage)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if args.command == "synth":
            summary = make_synthetic(
                args.kind, args.out, n=args.n, size=args.size, seed=args.seed,
                lesion_contrast=args.lesion_contrast, lesions=args.lesions, workers=args.workers,
            )
            print(f"{summary.kind}: {summary.n_images} images ({summary.n_positive} positive) in {summary.root}")
        else:
            result = prepare(
                args.kind, args.root, args.out, size=args.size, seed=args.seed,
                fractions=parse_fractions(args.fractions), workers=args.workers,
                skip_bad=args.skip_bad, compression=args.compression, ignore_unknown=args.ignore_unknown,
            )
            counts = " ".join(f"{k}={v}" for k, v in result.counts.items())
            print(f"{result.cache}: {counts} skipped={len(result.skipped)}; manifest {result.manifest}")
    except (MedhpcError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0
