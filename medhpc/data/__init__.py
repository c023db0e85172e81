"""Medical image datasets: readers, synthetic stand-ins, splits and HDF5 caches.

Typical use::

    python -m medhpc.data prepare --kind aptos --root /data/aptos --out aptos224.h5

    from medhpc.data import CacheLoader, to_float
    for images, labels in CacheLoader("aptos224.h5", "train", batch_size=32, shuffle=True):
        x = to_float(images, device="cuda")

The cache reader (which needs torch) is imported lazily so that readers,
splitting, synthesis and ``prepare`` work without importing torch.
"""

from __future__ import annotations

from typing import Any

from medhpc.data.errors import BadImageError, DataError
from medhpc.data.prepare import PrepareResult, manifest_path_for, prepare
from medhpc.data.readers import KINDS, class_names, read_aptos, read_cxr, read_dataset, read_folder
from medhpc.data.records import Record
from medhpc.data.split import (
    DEFAULT_FRACTIONS,
    SPLITS,
    Manifest,
    load_manifest,
    save_manifest,
    split_records,
)
from medhpc.data.synth import make_synthetic

__all__ = [
    "BadImageError",
    "CacheDataset",
    "CacheLoader",
    "DEFAULT_FRACTIONS",
    "DataError",
    "KINDS",
    "Manifest",
    "Record",
    "SPLITS",
    "cache_info",
    "class_names",
    "load_manifest",
    "make_synthetic",
    "manifest_path_for",
    "prepare",
    "PrepareResult",
    "read_aptos",
    "read_cxr",
    "read_dataset",
    "read_folder",
    "save_manifest",
    "split_records",
    "to_float",
]

_LAZY = {
    "CacheDataset": "medhpc.data.cache",
    "CacheLoader": "medhpc.data.cache",
    "cache_info": "medhpc.data.cache",
    "to_float": "medhpc.data.cache",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medhpc.data' has no attribute {name!r}")
