"""What every ``python -m medhpc...`` entry point shares: ``--set`` overrides, logging and the
exit status of a user error (configs load with :func:`medhpc.config.load`).

One place, so that every command reads ``--set key.sub=value`` the same way, logs in the same
format (jobs' logs on a cluster are read side by side) and turns a :class:`MedhpcError` into
its message alone and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

import yaml

from medhpc.errors import MedhpcError

#: Exit status of a bad input (config, data, path): the message names the culprit.
EXIT_USAGE = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key.sub=value`` pairs; values are parsed as YAML (numbers, true/false, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MedhpcError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def add_set_argument(parser: argparse.ArgumentParser, example: str = "limit=64") -> None:
    """The repeatable ``--set KEY=VALUE`` option every command takes."""
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {example} (repeatable)")  # fmt: skip


def setup_logging(level: int = logging.INFO) -> None:
    """medhpc's log format on the root logger, unless the host program configured one."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger("medhpc").setLevel(level)


def run_main(body: Callable[[], int]) -> int:
    """Run a command's body; a :class:`MedhpcError` prints ``error: MESSAGE`` and exits 2."""
    try:
        return body()
    except MedhpcError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
