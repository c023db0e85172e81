"""The kernel front: one typed Python function per compiled op.

Each op dispatches to the compiled ``medhpc._C`` kernel for the tensor's device when there is
one, and to its pure-PyTorch reference in :mod:`medhpc.ops.reference` otherwise (logged).
"""

from medhpc.ops.spsa import spsa_perturb, spsa_reduce
from medhpc.ops.vib import vib_reparam

#: Public compiled ops (names in the ``medhpc`` torch library), for ``medhpc info`` and tests.
OPS: tuple[str, ...] = ("vib_reparam", "spsa_perturb", "spsa_perturb_out", "spsa_reduce")

__all__ = ["OPS", "spsa_perturb", "spsa_reduce", "vib_reparam"]
