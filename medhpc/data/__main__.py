"""Entry point of ``python -m medhpc.data``."""

import sys

from medhpc.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
