"""``python -m medhpc.selftest`` (also ``python -m medhpc selftest``): see :mod:`medhpc.selftest`."""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
from pathlib import Path

import torch

from medhpc.cli import EXIT_USAGE, setup_logging

log = logging.getLogger("medhpc.selftest")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", action="store_true", help="run on the GPU at the paper's scale (fails without one)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument(
        "--only", action="append", metavar="NAME",
        help="run only the checks whose name contains NAME (repeatable; --list shows the names)",
    )  # fmt: skip
    parser.add_argument(
        "--require-cuda-kernels", action="store_true",
        help="fail unless CUDA kernels are compiled in, even on the CPU (container builds)",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the checks and exit")


def run(args: argparse.Namespace) -> int:
    """Run the selected checks, print the report, return the exit status (0 all passed, 1 not)."""
    from medhpc import __version__
    from medhpc.selftest.registry import CHECKS, select
    from medhpc.selftest.runner import CPU_SCALE, GPU_SCALE, Context, Outcome, as_json, run_checks, table

    if args.list:
        for check in CHECKS:
            sys.stdout.write(f"{check.name:<22} {check.what}\n")
        return 0
    try:
        checks = select(args.only)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    if args.gpu and not torch.cuda.is_available():
        outcomes = [Outcome("gpu", False, 0.0, "--gpu given but no CUDA device is visible (SLURM --gpus? --nv?)")]
        device_name = "none"
        scale = GPU_SCALE
    else:
        device = torch.device("cuda", torch.cuda.current_device()) if args.gpu else torch.device("cpu")
        device_name = torch.cuda.get_device_name(device) if args.gpu else platform.processor() or platform.machine()
        scale = GPU_SCALE if args.gpu else CPU_SCALE
        with tempfile.TemporaryDirectory(prefix="medhpc-selftest-") as tmp:
            ctx = Context(device, scale, Path(tmp), require_cuda_kernels=args.require_cuda_kernels)
            outcomes = run_checks(checks, ctx, progress=lambda c: log.info("running %s: %s", c.name, c.what))
    facts: dict[str, object] = {
        "medhpc": __version__,
        "torch": torch.__version__,
        "device": device_name,
        "scale": scale.name,
    }
    if args.json:
        sys.stdout.write(as_json(outcomes, facts) + "\n")
    else:
        header = f"medhpc {__version__} self-test, torch {torch.__version__}, on {device_name} ({scale.name} scale)"
        sys.stdout.write(table(outcomes, header) + "\n")
    return 0 if all(o.ok for o in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    import medhpc.selftest

    parser = argparse.ArgumentParser(
        prog="python -m medhpc selftest", description=medhpc.selftest.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
