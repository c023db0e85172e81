"""The layer contract (``[tool.importlinter]`` in pyproject.toml) holds, and it would catch a
change that breaks it: data -> models -> attacks (-> ops) -> train (adversarial training uses the
attacks) -> store -> report, the sweep on top, the self-test beside it, a store that knows no
attack or model code, and no import cycles."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed (pip install import-linter)")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_layer_contract_is_kept() -> None:
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("store/schema.py", "import medhpc.report.tables", "Layers"),  # a lower layer reaching up
        ("store/schema.py", "import medhpc.attacks.config", "The store reads and writes shards only"),
        ("models/spec.py", "import medhpc.models.classifier", "No import cycles"),  # classifier -> spec -> classifier
        ("config.py", "import medhpc.data", "The shared base"),
        ("sweep/graph.py", "import medhpc.selftest.runner", "Layers"),  # the two top layers are independent
        ("attacks/pgd.py", "import medhpc.train.loop", "Layers"),  # training sits above the attacks it uses
    ],
)
def test_breaking_the_contract_fails(tmp_path: Path, module: str, line: str, broken: str) -> None:
    shutil.copytree(ROOT / "medhpc", tmp_path / "medhpc", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "medhpc" / module
    target.write_text(target.read_text() + f"\n{line}  # a deliberate violation\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0, proc.stdout
    text = " ".join(proc.stdout.split())  # the report wraps long contract names
    # That contract's own line ends in BROKEN (not the next one's).
    assert re.search(rf"{re.escape(broken)}((?!KEPT).)*?BROKEN", text), proc.stdout
