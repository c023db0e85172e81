"""The installation: the extension is built and loaded, CUDA kernels are compiled and linked
whenever the build host has nvcc (no GPU needed), the fallback is loud, `medhpc info` reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from medhpc import _ext
from medhpc.ops import OPS

REPO = Path(__file__).resolve().parents[1]


def _build_host_has_cuda() -> bool:
    """The condition under which setup.py builds the CUDA kernels."""
    if os.environ.get("MEDHPC_NO_CUDA", "0") == "1" or torch.version.cuda is None:
        return False
    cuda_home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return Path(cuda_home, "bin", "nvcc").exists()


def test_extension_loaded_with_cpu_kernels() -> None:
    assert _ext.loaded(), f"medhpc._C did not load: {_ext.LOAD_ERROR}"
    for op in OPS:
        assert _ext.has_kernel(op, "cpu"), op


def test_cuda_kernels_compiled_and_linked_when_nvcc_present() -> None:
    if not _build_host_has_cuda():
        assert not any(_ext.has_kernel(op, "cuda") for op in OPS)
        return
    for op in OPS:
        assert _ext.has_kernel(op, "cuda"), f"{op}: CUDA kernel missing though nvcc is present"


def _run_info(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "medhpc", "info"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def test_info_reports_versions_backends_and_gpu() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "medhpc", "info", "--json"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["torch"] == torch.__version__
    assert facts["extension"]["loaded"] is True
    assert facts["gpu"]["visible"] == torch.cuda.is_available()
    assert set(facts["ops"]) == set(OPS)
    assert facts["extension"]["built_with_cuda"] == _build_host_has_cuda()


def test_missing_extension_is_loud_and_ops_still_work() -> None:
    out = _run_info({"MEDHPC_DISABLE_EXT": "1"})
    assert out.returncode == 0, out.stderr
    assert "NOT LOADED" in out.stdout and "WARNING" in out.stdout
    code = (
        "import logging, torch; logging.basicConfig(level=logging.WARNING);"
        "from medhpc.ops import vib_reparam;"
        "z, kl = vib_reparam(torch.zeros(2, 3), torch.zeros(2, 3), 2, seed=1);"
        "print(tuple(z.shape), tuple(kl.shape))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "MEDHPC_DISABLE_EXT": "1"},
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "(2, 2, 3) (2,)" in run.stdout
    assert "using the pure-PyTorch reference" in run.stderr
