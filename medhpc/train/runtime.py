"""How a training run computes on its device: autocast dtype, TF32, deterministic kernels.

These settings change the numbers a run produces without changing what it computes, so they
are kept out of the config hash; but a run must resume under the same ones, or it would not
continue the same computation. :func:`describe` is what a checkpoint stores and a resume
compares (:func:`medhpc.train.checkpoint.check_runtime`).

TF32 (cuDNN convolutions and cuBLAS matmuls on Ampere and later) is set explicitly from the
config, off by default, whatever torch's own defaults are (cuDNN's is on, cuBLAS's off):
``precision: fp32`` then means IEEE fp32, and a run does not depend on what an earlier job in
the same process left set. The default ``precision: auto`` (bf16 autocast on CUDA) runs the
convolutions and matmuls in bf16 anyway, so TF32 would buy little there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)

#: The cuBLAS workspace settings torch accepts as deterministic (see torch's reproducibility notes).
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None for fp32; bf16 on CUDA under ``auto``."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def describe(device: torch.device, amp: torch.dtype | None, tf32: bool) -> dict[str, Any]:
    """What a checkpoint records of the numerics it was written under (TF32 counts on CUDA only)."""
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
    return {"device": device.type, "precision": precision, "tf32": bool(tf32 and device.type == "cuda")}


def render(runtime: dict[str, Any]) -> str:
    """``cuda, bf16 autocast, TF32 off`` (for messages)."""
    precision = "fp32" if runtime.get("precision") == "fp32" else f"{runtime.get('precision')} autocast"
    text = f"{runtime.get('device')}, {precision}"
    return text + (f", TF32 {'on' if runtime.get('tf32') else 'off'}" if runtime.get("device") == "cuda" else "")


def ensure_cublas_workspace_config() -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless it already holds a deterministic value.

    cuBLAS reads it when torch first creates a cuBLAS handle in the process, so it must be set
    before the first matmul on the GPU: :func:`medhpc.train.loop.train` calls this before it
    builds the model. In a process that already ran cuBLAS it may be too late (logged); set the
    variable in the job's environment then (``slurm/``)."""
    current = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if current in CUBLAS_DETERMINISTIC:
        return
    if current is not None:
        log.warning("CUBLAS_WORKSPACE_CONFIG=%r is not deterministic; using :4096:8 (deterministic: true)", current)
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
    if torch.cuda.is_initialized():
        log.warning(
            "CUBLAS_WORKSPACE_CONFIG set after CUDA was initialised in this process: cuBLAS may have read "
            "the old value; for bit-identical runs set CUBLAS_WORKSPACE_CONFIG=:4096:8 in the job's environment"
        )


@contextmanager
def numerics(device: torch.device, *, tf32: bool, deterministic: bool) -> Iterator[None]:
    """Apply a run's TF32 and determinism settings for the duration of the run, then restore.

    ``deterministic``: ``torch.use_deterministic_algorithms(True)`` (an op without a
    deterministic implementation raises, it does not only warn), cuDNN autotuning off and the
    cuBLAS workspace config set. Otherwise cuDNN autotunes on CUDA. The previous settings come
    back on exit, so one job does not change the numerics of the next in the same process.
    """
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    try:
        # The legacy flags only: mixing them with torch's newer fp32_precision API makes the
        # legacy getters raise.
        if device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
        if deterministic:
            ensure_cublas_workspace_config()
            torch.use_deterministic_algorithms(True, warn_only=False)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.backends.cudnn.allow_tf32 = saved[3]
        torch.set_float32_matmul_precision(saved[4])
