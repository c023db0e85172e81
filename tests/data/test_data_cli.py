"""``python -m medhpc.data``: exit codes and messages, through ``main(argv)``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from medhpc.data import cache_info, read_dataset
from medhpc.data.cli import main


def test_synth_then_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cxr"
    assert main(["synth", "--kind", "cxr", "--n", "20", "--size", "24", "--out", str(root),
                 "--seed", "3", "--lesion-contrast", "0.5", "--lesions", "2", "--workers", "1"]) == 0
    assert len(read_dataset("cxr", root)) == 20
    out = tmp_path / "c.h5"
    assert main(["prepare", "--kind", "cxr", "--root", str(root), "--size", "16", "--out", str(out),
                 "--fractions", "0.5,0.25,0.25", "--workers", "1", "--compression", "none"]) == 0
    assert cache_info(out)["counts"] == {"train": 10, "val": 5, "test": 5}
    assert "train=10 val=5 test=5 skipped=0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prepare", "--kind", "aptos", "--root", "{tmp}/missing", "--out", "{tmp}/c.h5"], "does not exist"),
        (["prepare", "--kind", "cxr", "--root", "{tmp}", "--out", "{tmp}/c.h5"], "holds neither chest_xray/"),
        (["prepare", "--kind", "aptos", "--root", "{tmp}", "--out", "{tmp}/c.h5", "--fractions", "1,1,1"], "sum to 1"),
        (["synth", "--kind", "cxr", "--n", "3", "--out", "{tmp}/s"], "n >= 11"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "--kind", "isic", "--root", "x", "--out", "y"]) == 2
    assert "invalid choice: 'isic'" in capsys.readouterr().err
    assert main([]) == 2


def test_skip_bad_from_the_command_line(
    aptos, copy_dataset: Callable[[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_dataset(aptos.root)
    victim = sorted((root / "train_images").iterdir())[2]
    victim.write_bytes(b"garbage")
    argv = ["prepare", "--kind", "aptos", "--root", str(root), "--size", "16", "--out", str(tmp_path / "c.h5"),
            "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot decode image") and str(victim) in err
    assert main([*argv, "--skip-bad"]) == 0
    assert "skipped=1" in capsys.readouterr().out


def test_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "medhpc.data", "prepare", "--kind", "cxr", "--root", str(tmp_path / "nope"),
         "--out", str(tmp_path / "c.h5")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: chest X-ray folder does not exist: {tmp_path / 'nope'}"
    assert "Traceback" not in proc.stderr
