"""The clean evaluation as an attack (``attack: none``): the images unchanged, with the model's
predictions on them, so that a sweep stores and reports clean and adversarial rows alike."""

from __future__ import annotations

import torch
from torch import nn

from medhpc.attacks.common import AttackResult, Clip, LabelMode, begin, finish
from medhpc.attacks.spec import AttackSpec


def none(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    clip: Clip | None = (0.0, 1.0),
    label_mode: LabelMode = "true",
    targeted: bool = False,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """``x`` itself; ``success`` is all False and ``pred`` the clean prediction."""
    s = begin(SPEC, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed, generator=generator)
    return finish(model, s.x, s.x, s.labels, False, s.seed)


SPEC = AttackSpec("none", none, bounded=False, white_box=False, iterative=False, perturbs=False)
