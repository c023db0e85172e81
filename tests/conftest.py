"""Test-wide settings: GPU tests are reported as skipped, with the reason, where no GPU is;
the ``timeout`` marker works without pytest-timeout; ``no_tf32`` for CPU-vs-GPU comparisons."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


# pytest-timeout (a test extra) registers the ``timeout`` marker and ini key; without it
# both must still be known (--strict-markers; no "unknown config option" warning), and inert.
def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not pluginmanager.hasplugin("timeout"):
        parser.addini("timeout", "per-test time limit in seconds (needs pytest-timeout; inert here)")


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): per-test time limit (needs pytest-timeout; inert here)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device: run on the GPU machine (-m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """IEEE fp32 on the GPU for the test (TF32 off for cuDNN convolutions and cuBLAS matmuls),
    the previous settings restored after. On Ampere and later, TF32 (torch's default for
    cuDNN) differs from the CPU by ~1e-3: a CPU-vs-GPU comparison at 1e-4 needs this."""
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])
