"""The test suite's own settings (tests/conftest.py): ``no_tf32`` and ``timeout`` without its plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


def test_no_tf32_turns_tf32_off_and_restores_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest
        import torch

        def test_before():
            torch.backends.cudnn.allow_tf32 = True
            torch.set_float32_matmul_precision("high")

        @pytest.mark.usefixtures("no_tf32")
        def test_inside():
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.get_float32_matmul_precision() == "highest"
            assert torch.backends.cuda.matmul.allow_tf32 is False

        def test_after():
            assert torch.backends.cudnn.allow_tf32 is True
            assert torch.get_float32_matmul_precision() == "high"
            torch.set_float32_matmul_precision("highest")
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_timeout_marker_and_ini_key_work_without_pytest_timeout(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\naddopts = --strict-markers\ntimeout = 600\n")
    pytester.makepyfile("import pytest\n\n@pytest.mark.timeout(5)\ndef test_marked():\n    pass\n")
    warnings_are_errors = ("-W", "error::pytest.PytestConfigWarning")  # "Unknown config option: timeout"
    result = pytester.runpytest_inprocess("-p", "no:timeout", "-p", "no:cacheprovider", *warnings_are_errors)
    result.assert_outcomes(passed=1)
    assert "Unknown config option" not in result.stdout.str()
