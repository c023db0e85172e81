"""Load the compiled library ``medhpc._C`` once, and say which backend each op uses and why.

The package works without a compiler: when ``_C`` is missing (or ``MEDHPC_DISABLE_EXT=1``),
every op in :mod:`medhpc.ops` falls back to its pure-PyTorch reference, with a warning logged
once per op and device, and ``python -m medhpc info`` says so loudly.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

import torch  # must be imported before _C, or loading fails on libc10.so

log = logging.getLogger(__name__)

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _load() -> tuple[ModuleType | None, str | None]:
    if os.environ.get("MEDHPC_DISABLE_EXT", "0").lower() in {"1", "true", "yes", "on"}:
        return None, "disabled by MEDHPC_DISABLE_EXT=1"
    try:
        import medhpc._C as lib
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return lib, None


_C, LOAD_ERROR = _load()
_warned: set[tuple[str, str]] = set()


def loaded() -> bool:
    """Whether the compiled library is loaded (its ops and kernels are registered)."""
    return _C is not None


def library_path() -> str | None:
    """File the compiled library was loaded from, if any."""
    return getattr(_C, "__file__", None)


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``medhpc::op`` has a compiled kernel for ``device_type`` ("cpu" or "cuda")."""
    key = _DISPATCH_KEYS.get(device_type)
    if _C is None or key is None:
        return False
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"medhpc::{op}", key))


def warn_fallback(op: str, device_type: str) -> None:
    """Log, once per op and device type, that the slow reference runs instead of a kernel."""
    if (op, device_type) in _warned:
        return
    _warned.add((op, device_type))
    why = LOAD_ERROR if _C is None else f"the extension was built without {device_type} kernels"
    log.warning(
        "medhpc.ops.%s on %s: no compiled kernel (%s); using the pure-PyTorch reference",
        op,
        device_type,
        why,
    )
