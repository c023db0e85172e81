"""``python -m medhpc selftest [--gpu] [--json]``: is this node (or container) fit for a sweep?

Checks every compiled op against its reference (fp32 and bf16, past int32 indexing, run to
run, on a busy side stream), a bf16 ResNet50 training step, a train / kill / resume round trip
and every attack without host synchronisation, then prints a pass/fail table and exits
non-zero on any failure. With ``--gpu`` it runs on the GPU at the paper's scale; without, on
the CPU at small sizes (what CI runs). ``docker/check_image.py`` is a thin call of it.
"""

from medhpc.selftest.registry import CHECKS, check_names, select
from medhpc.selftest.runner import CPU_SCALE, GPU_SCALE, Check, CheckFailed, Context, Outcome, Scale, run_checks

__all__ = [
    "CHECKS",
    "CPU_SCALE",
    "GPU_SCALE",
    "Check",
    "CheckFailed",
    "Context",
    "Outcome",
    "Scale",
    "check_names",
    "run_checks",
    "select",
]
