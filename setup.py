"""Build medhpc and its compiled extension ``medhpc._C``.

The C++ CPU kernels are always built. The CUDA kernels are built whenever the installed torch
has CUDA and nvcc is found (``CUDA_HOME``, default ``/usr/local/cuda``) -- a GPU is *not*
needed, so build hosts and CI compile and link every ``.cu`` file. Environment switches:

``MEDHPC_NO_CUDA=1``      build the CPU part only (quick local iteration)
``MEDHPC_FORCE_CUDA=1``   fail instead of silently skipping CUDA when nvcc is missing
``TORCH_CUDA_ARCH_LIST``  compute capabilities; defaults to "8.0;9.0" when no GPU is visible
``MAX_JOBS``              parallel compile jobs (ninja)

Install with ``pip install --no-build-isolation -e .`` so the extension compiles against the
torch that is installed (see requirements-pinned.txt for the pinned versions).
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

# torch.utils.cpp_extension reads CUDA_HOME when it is imported; without it torch guesses from
# the nvcc on PATH and the link fails (build-notes.md), so set the usual location first.
if not os.environ.get("CUDA_HOME") and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

HERE = Path(__file__).resolve().parent
os.chdir(HERE)  # setuptools wants source paths relative to setup.py
CSRC = Path("csrc")
DEFAULT_ARCHS = "8.0;9.0"  # A100 and H100/H200, the cluster GPUs medhpc targets


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in {"1", "true", "yes", "on"}


def _nvcc_found() -> bool:
    return CUDA_HOME is not None and Path(CUDA_HOME, "bin", "nvcc").exists()


def _want_cuda() -> tuple[bool, str]:
    """Decide whether to compile the CUDA kernels, and say why."""
    if _flag("MEDHPC_NO_CUDA"):
        return False, "MEDHPC_NO_CUDA=1"
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} has no CUDA"
    elif not _nvcc_found():
        reason = f"nvcc not found (CUDA_HOME={CUDA_HOME})"
    else:
        return True, f"torch CUDA {torch.version.cuda}, nvcc in {CUDA_HOME}"
    if _flag("MEDHPC_FORCE_CUDA"):
        raise SystemExit(f"medhpc: MEDHPC_FORCE_CUDA=1 but {reason}")
    return False, reason


def _pip_cuda_includes() -> list[str]:
    """CUDA headers that torch needs but /usr/local/cuda may lack (cuSPARSE, cuBLAS, ...)."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for root in spec.submodule_search_locations:
        for sub in ("cu13/include", "cu12/include"):
            path = Path(root, sub)
            if path.is_dir():
                found.append(str(path))
    return found


def _extension():
    cpu_sources = [str(CSRC / "medhpc_ops.cpp"), *sorted(glob.glob(str(CSRC / "cpu" / "*.cpp")))]
    cuda_sources = sorted(glob.glob(str(CSRC / "cuda" / "*.cu")))
    include_dirs = [str(HERE / CSRC)]
    with_cuda, why = _want_cuda()
    cxx = ["-O3", "-fopenmp", "-std=c++17"]
    if not with_cuda:
        print(f"medhpc: building medhpc._C with CPU kernels only ({why})")
        return CppExtension(
            "medhpc._C",
            cpu_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPU's")
    print(f"medhpc: building medhpc._C with CPU and CUDA kernels ({why}; arch {archs})")
    return CUDAExtension(
        "medhpc._C",
        cpu_sources + cuda_sources,
        include_dirs=include_dirs + _pip_cuda_includes(),
        define_macros=[("MEDHPC_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
)
