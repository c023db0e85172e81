"""``python -m medhpc.attack``: the old name of ``python -m medhpc.attacks``, kept as an alias
that says so (scripts written against it keep working)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write("note: 'python -m medhpc.attack' is now 'python -m medhpc.attacks'; the old name is an alias\n")
    from medhpc.attacks.__main__ import main as attacks_main

    return attacks_main(argv, prog="python -m medhpc.attack")


if __name__ == "__main__":
    sys.exit(main())
