"""Shared synthetic datasets for the medhpc.data tests.

The session-scoped datasets are read-only; tests that damage a dataset get
their own copy from ``copy_dataset``. (The project runs pytest with
``--import-mode=importlib``, so test modules share data through fixtures,
not imports.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from medhpc.data import make_synthetic


@dataclass(frozen=True)
class Synth:
    """A synthetic dataset on disk and how it was made."""

    kind: str
    root: Path
    n: int
    size: int


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.startswith("slow:") for line in config.getini("markers")):
        config.addinivalue_line("markers", "slow: takes more than ~30 s on a 2-core CPU")


@pytest.fixture(scope="session")
def aptos(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """A small synthetic APTOS tree (train.csv, train_images/, test_images/, masks/)."""
    root = tmp_path_factory.mktemp("aptos") / "aptos"
    make_synthetic("aptos", root, n=40, size=32, seed=0)
    return Synth("aptos", root, 40, 32)


@pytest.fixture(scope="session")
def cxr(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """A small synthetic Kermany tree (chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}, masks/)."""
    root = tmp_path_factory.mktemp("cxr") / "cxr"
    make_synthetic("cxr", root, n=60, size=32, seed=0)
    return Synth("cxr", root, 60, 32)


@pytest.fixture
def copy_dataset(tmp_path: Path) -> Callable[[Path], Path]:
    """Return a function that copies a dataset tree into this test's tmp folder."""

    def copy(root: Path) -> Path:
        dest = tmp_path / f"copy-{root.name}"
        shutil.copytree(root, dest)
        return dest

    return copy


@pytest.fixture
def cxr_with_archive_junk(cxr: Synth, tmp_path: Path) -> Path:
    """The CXR tree plus what some archives add: a nested duplicate and __MACOSX."""
    root = tmp_path / "cxr-junk"
    shutil.copytree(cxr.root, root)
    top = root / "chest_xray"
    shutil.copytree(top, root / "nested-tmp")
    (root / "nested-tmp").rename(top / "chest_xray")
    for macosx in (root / "__MACOSX" / "chest_xray", top / "__MACOSX" / "chest_xray"):
        for image in (top / "train" / "NORMAL").glob("*.jpeg"):
            dest = macosx / "train" / "NORMAL" / f"._{image.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    # AppleDouble companions and Finder files also appear beside the real images.
    (top / "train" / "PNEUMONIA" / "._person1_bacteria_1.jpeg").write_bytes(b"\x00\x05\x16\x07")
    (top / "test" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    return root
