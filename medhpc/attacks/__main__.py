"""``python -m medhpc.attacks CONFIG``: accuracy of a trained model under a list of attacks.

The config names a finished training run and the attacks (or ``preset: paper``, the first
seed's Appendix B/C rows). The result, per attack accuracy, success rate, mean L2 / L∞ and
gradient-masking warnings, is written as ``robustness-<config hash>.json`` in the run's folder
(or ``out``); a rerun with the same config finds it and does nothing.
"""

from __future__ import annotations

import argparse
import json
import sys

from medhpc.cli import add_set_argument, parse_set, run_main, setup_logging


def main(argv: list[str] | None = None, prog: str = "python -m medhpc.attacks") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("config", help="robustness config (.yaml, .yml or .toml)")
    add_set_argument(parser, "limit=64")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from medhpc.attacks.evaluate import evaluate_run, load_config

        cfg = load_config(args.config, parse_set(args.sets))
        out = evaluate_run(cfg, progress=False if args.quiet else None)
        summary = json.loads(out.read_text())
        for row in summary["attacks"]:
            sys.stdout.write(f"{row['name']:<40} accuracy {row['accuracy']:.4f}  success {row['success_rate']:.4f}\n")
        for warning in summary["warnings"]:
            sys.stdout.write(f"WARNING {warning['kind']}: {warning['message']}\n")
        sys.stdout.write(f"{out}\n")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
