"""What this installation is: versions, whether the compiled kernels loaded, which backends
each op has, and whether a GPU is visible. Shown by ``python -m medhpc info``."""

from __future__ import annotations

import platform
from typing import Any

import torch

import medhpc
from medhpc import _ext
from medhpc.ops import OPS


def collect() -> dict[str, Any]:
    """The facts ``medhpc info`` prints, as a JSON-ready dict."""
    import torchvision

    cuda_visible = torch.cuda.is_available()
    ops = {
        op: {
            "cpu": _ext.has_kernel(op, "cpu"),
            "cuda": _ext.has_kernel(op, "cuda"),
            "reference": True,
        }
        for op in OPS
    }
    return {
        "medhpc": medhpc.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torchvision": torchvision.__version__,
        "extension": {
            "loaded": _ext.loaded(),
            "path": _ext.library_path(),
            "error": _ext.LOAD_ERROR,
            "built_with_cuda": any(v["cuda"] for v in ops.values()),
        },
        "gpu": {
            "visible": cuda_visible,
            "count": torch.cuda.device_count() if cuda_visible else 0,
            "names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda_visible
            else [],
        },
        "ops": ops,
    }


def format_text(facts: dict[str, Any]) -> str:
    """Human-readable report; a missing extension is shouted, never whispered."""
    ext, gpu = facts["extension"], facts["gpu"]
    lines = [
        f"medhpc       {facts['medhpc']}",
        f"python       {facts['python']}",
        f"torch        {facts['torch']} (CUDA {facts['torch_cuda'] or 'none'}, cuDNN {facts['cudnn']})",
        f"torchvision  {facts['torchvision']}",
    ]
    if ext["loaded"]:
        lines.append(
            f"extension    medhpc._C loaded from {ext['path']}; "
            f"CUDA kernels {'built' if ext['built_with_cuda'] else 'NOT built'}"
        )
    else:
        lines.append(f"extension    NOT LOADED ({ext['error']})")
        lines.append(
            "WARNING: every op falls back to its pure-PyTorch reference (correct but slow); "
            "build the extension with `pip install --no-build-isolation -e .`"
        )
    if gpu["visible"]:
        lines.append(f"gpu          {gpu['count']} visible: {', '.join(gpu['names'])}")
    else:
        lines.append("gpu          none visible (CUDA kernels, if built, cannot run here)")
    lines.append("ops          backend per device (compiled kernel, else reference fallback)")
    for op, b in facts["ops"].items():
        cpu = "compiled" if b["cpu"] else "reference"
        cuda = "compiled" if b["cuda"] else "reference"
        lines.append(f"  {op:<20} cpu: {cpu:<10} cuda: {cuda:<10} reference: yes")
    return "\n".join(lines)
