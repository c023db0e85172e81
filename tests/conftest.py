"""Test-wide settings: GPU tests are reported as skipped, with the reason, where no GPU is;
the ``timeout`` marker works without pytest-timeout; ``no_tf32`` for CPU-vs-GPU comparisons;
``demo_sweep``, the demo study run once per session for every test that reads it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

#: The study ``make demo`` runs.
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "medhpc" / "configs" / "sweep-demo.yaml"


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


@pytest.fixture(scope="session")
def demo_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of the real demo (``make demo``): ``medhpc/configs/sweep-demo.yaml``
    with only ``out`` moved into a temporary folder, run once per session. Its report is under
    ``report/`` (``summary.json``, ``summary.md``, ``index.md``), its evaluations under ``eval/``.

    Run exactly as ``python -m medhpc.sweep run`` runs it: the config's own executor (``local``:
    submitit subprocesses, ``workers`` at a time), so the jobs, their parallelism and the
    wall time are those of the demo. Takes about 6 minutes on a 2-core CPU; a test using it
    should be marked ``slow`` with a ``timeout`` of ~1500 s (the first one pays for the run).
    """
    from medhpc.sweep import load_sweep
    from medhpc.sweep.executors import EXECUTORS
    from medhpc.sweep.run import failures, status

    out = tmp_path_factory.mktemp("demo") / "sweep"
    cfg = load_sweep(DEMO_CONFIG, {"out": str(out)}, check_roots=True)
    EXECUTORS[cfg.executor](cfg)
    assert not failures(cfg), failures(cfg)
    counts = status(cfg)
    assert all(c["done"] == c["total"] for c in counts.values()), counts
    return out
