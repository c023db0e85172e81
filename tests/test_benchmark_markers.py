"""GPU benchmarks carry the `gpu` marker: `pytest benchmarks -m gpu` selects exactly them, and a
run without a GPU reports them skipped with the reason (benchmarks/ is outside tests/, so the
skip of tests/conftest.py does not reach them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _pytest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=300,
    )


def _collected(*args: str, env: dict[str, str] | None = None) -> list[str]:
    out = _pytest("--collect-only", "-q", *args, env=env)
    assert out.returncode in (0, 5), out.stdout + out.stderr  # 5: nothing selected
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_bench_spsa_gpu_marker_selects_the_cuda_rows() -> None:
    every = _collected("benchmarks/bench_spsa.py")
    gpu = _collected("benchmarks/bench_spsa.py", "-m", "gpu")
    cuda = [node for node in every if "[cuda" in node]
    assert cuda and gpu == cuda


def test_bench_attacks_on_cuda_is_marked_gpu() -> None:
    """bench_attacks picks its device from MEDHPC_BENCH_DEVICE: on cuda all of it is GPU work."""
    assert _collected("benchmarks/bench_attacks.py", "-m", "gpu") == []
    on_cuda = {"MEDHPC_BENCH_DEVICE": "cuda"}
    every = _collected("benchmarks/bench_attacks.py", env=on_cuda)
    assert every and _collected("benchmarks/bench_attacks.py", "-m", "gpu", env=on_cuda) == every


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the gpu rows would run, not skip")
def test_gpu_benchmarks_skip_with_their_reason_without_a_gpu() -> None:
    out = _pytest("benchmarks/bench_spsa.py", "-m", "gpu", "-rs", "-q", "--benchmark-disable")
    assert out.returncode == 0, out.stdout + out.stderr
    assert " skipped" in out.stdout and " passed" not in out.stdout, out.stdout
    assert "needs a CUDA device: run on the GPU machine (-m gpu)" in out.stdout
