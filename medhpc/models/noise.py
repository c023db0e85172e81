"""How stochastic layers (the VIB head) draw their noise, and how attacks control it.

A stochastic layer owns a :class:`NoiseSource`. By default each forward pass takes a fresh
Philox seed from torch's global generator, so ``torch.manual_seed`` makes a run reproducible
and a checkpoint's saved RNG state makes a resumed run continue the same stream. Attacks use
:func:`fixed_noise` to pin one model draw: every forward inside the block sees the same noise
(expectation over transformation averages over several such blocks; SPSA's common random
numbers evaluate both halves of a ± pair under one draw via ``share_rows=2``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

SEED_LIMIT = 2**62


class NoiseSource:
    """Seeds for one stochastic layer: fresh per call, or fixed inside :func:`fixed_noise`."""

    def __init__(self) -> None:
        self.fixed: int | None = None
        self.share_rows = 1

    def next(self) -> tuple[int, int]:
        """``(seed, share_rows)`` for the next forward pass.

        Rows ``b`` and ``b'`` of a batch get the same noise iff ``b // share_rows ==
        b' // share_rows``.
        """
        if self.fixed is not None:
            return self.fixed, self.share_rows
        # The CPU generator: no device synchronisation, saved with torch.get_rng_state().
        return int(torch.randint(0, SEED_LIMIT, (1,)).item()), 1


def noise_sources(model: nn.Module) -> list[NoiseSource]:
    """The noise sources of a model's stochastic layers, in module order."""
    sources = (getattr(m, "noise", None) for m in model.modules())
    return [s for s in sources if isinstance(s, NoiseSource)]


def is_stochastic(model: nn.Module) -> bool:
    """Whether the model's output is random (then attacks should use EOT)."""
    return bool(noise_sources(model))


def _layer_seed(seed: int, layer: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{layer}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % SEED_LIMIT


@contextmanager
def fixed_noise(model: nn.Module, seed: int, share_rows: int = 1) -> Iterator[None]:
    """Pin the model's noise to one draw named by ``seed`` for the duration of the block.

    Two forward passes inside the block with the same batch layout see the same noise, row by
    row. ``share_rows=g`` also gives rows ``g*i .. g*i+g-1`` of a batch one draw between them
    (the VIB head passes it to the fused ``vib_reparam`` as ``share_rows``). A deterministic
    model is unaffected.
    """
    if share_rows < 1:
        raise ValueError(f"share_rows must be >= 1, got {share_rows}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    sources = noise_sources(model)
    saved = [(s.fixed, s.share_rows) for s in sources]
    try:
        for i, source in enumerate(sources):
            source.fixed = _layer_seed(seed, i)
            source.share_rows = share_rows
        yield
    finally:
        for source, (fixed, share) in zip(sources, saved, strict=True):
            source.fixed, source.share_rows = fixed, share
