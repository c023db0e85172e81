#!/usr/bin/env python3
"""Check that an image (or any install) runs medhpc as the cluster jobs need it: a thin call of
``python -m medhpc selftest --require-cuda-kernels`` (arguments are passed on).

Run at the end of the Docker build, by the Apptainer image's ``%test``, and by hand on a GPU
node to check a container command before a sweep uses it::

    srun --gpus-per-node=1 apptainer exec --nv medhpc.sif python /opt/medhpc/docker/check_image.py --gpu

It fails unless the extension ``medhpc._C`` loads with a CPU and a CUDA kernel for every op,
and then runs the self-test: on the CPU at small sizes, or with ``--gpu`` on the visible GPU at
the paper's scale (which also shows that the image carries code for this GPU's compute
capability). Exit status 0, or 1 with the failed checks in the table.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from medhpc.selftest.__main__ import main as selftest

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(__doc__ + "\n")
    return selftest(["--require-cuda-kernels", *args])


if __name__ == "__main__":
    sys.exit(main())
