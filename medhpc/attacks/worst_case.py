"""The per-image worst case over an ensemble of attacks (AutoAttack's protocol, Croce & Hein
2020), made valid for two-class and stochastic models.

Members run in order, each only on the images every earlier member left robust, so the
ensemble costs little more than its first member on a weak model and is, per image, at least as
strong as every member. The default order is AutoAttack's with its two-class substitutes:
APGD on the cross-entropy, APGD on the logit margin (DLR needs a third class), FAB
(minimum-norm), and the Square attack (score-based, so a masked gradient cannot hide an
adversarial example from it).

Stochastic heads (VIB) are judged by their deployed prediction, the model's mean over its
``eval_samples`` draws. Every member that follows gradients then averages them over ``eot``
draws (default 20, AutoAttack's ``rand`` version), and an image counts as broken only if the
deployed prediction is still wrong under ``recheck`` fresh draws after the attack: a success
that holds for one noise draw only is not one. For a deterministic model one check is the
same as any number.

The member loop runs a handful of times per batch; choosing the still-robust images between
members is one host read each (their count decides the sub-batch). Inside every member's own
iteration loop the rules of :mod:`medhpc.attacks.common` hold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medhpc.attacks.common import (
    AttackResult,
    Clip,
    LabelMode,
    begin,
    check_count,
    decide,
    derive_seed,
    finish,
    model_logits,
)
from medhpc.attacks.spec import AttackSpec

if TYPE_CHECKING:
    from medhpc.attacks.config import AttackConfig

#: AutoAttack's order with its two-class substitutes, at the budgets of its standard version;
#: a config that leaves ``members`` out gets these at its own ε and norm.
DEFAULT_MEMBERS: tuple[dict[str, Any], ...] = (
    {"attack": "apgd", "loss": "ce", "steps": 100},
    {"attack": "apgd", "loss": "margin", "steps": 100},
    {"attack": "fab", "steps": 100},
    {"attack": "square", "queries": 5000},
)


def default_members(settings: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """:data:`DEFAULT_MEMBERS` at a config's ε and norm (the spec's derived rule for ``members``:
    :class:`~medhpc.attacks.config.AttackConfig` turns them into configs)."""
    return tuple({**m, "eps": settings["eps"], "norm": settings["norm"]} for m in DEFAULT_MEMBERS)


def member_problem(member: Any, eps: float | None, norm: str | None) -> str | None:
    """Why ``member`` cannot be one of an ensemble at ``eps``/``norm`` (None if it can).

    Members are :class:`~medhpc.attacks.config.AttackConfig` records, read through their
    ``spec`` and ``kwargs()`` (the config module imports the registry, which lists this one).
    """
    spec = getattr(member, "spec", None)
    if not isinstance(spec, AttackSpec) or not callable(getattr(member, "kwargs", None)):
        return f"must be an attack config, got {type(member).__name__}"
    if spec.function is worst_case:
        return "an ensemble cannot be its own member"
    if not (spec.bounded and spec.perturbs):
        return f"{member.attack!r} is not bounded by an ε-ball: the worst case at ε compares ε-bounded attacks"
    if eps is not None and member.eps != eps:
        return f"its eps {member.eps!r} differs from the ensemble's {eps!r}"
    if norm is not None and member.norm is not None and member.norm != norm:
        return f"its norm {member.norm!r} differs from the ensemble's {norm!r}"
    if member.targeted:
        return "members are untargeted; set targeted on the ensemble"
    if member.spec.calibrated:
        return f"{member.attack!r} attacks a detector, not the classifier alone; run it as its own row"
    return None


def check_config(settings: Mapping[str, Any]) -> tuple[str, str] | None:
    """The cross-field check of an ensemble's config: ``(key, problem)`` or None."""
    clip = settings.get("clip")
    finite = clip is not None and all(math.isfinite(v) for v in clip)
    for i, member in enumerate(settings.get("members") or ()):
        problem = member_problem(member, settings.get("eps"), settings.get("norm"))
        if problem is None and not finite and member.spec.finite_clip:
            problem = f"{member.attack!r} needs a finite clip range, and the ensemble's is {clip!r}"
        if problem:
            return f"members[{i}]", problem
    return None


def worst_case(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    norm: str = "linf",
    members: Sequence[AttackConfig] | None = None,
    eot: int = 20,
    recheck: int = 4,
    clip: Clip | None = (0.0, 1.0),
    label_mode: LabelMode = "true",
    targeted: bool = False,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Run ``members`` in order on the images still robust; per image, the first break.

    Parameters
    ----------
    eps, norm : the ε-ball every member attacks in (each member's own eps and norm must match).
    members : attack configs (bounded, untargeted); an :class:`AttackConfig` that leaves them
        out fills in :data:`DEFAULT_MEMBERS`. A member's ``clip``, ``label_mode`` and
        ``targeted`` are the ensemble's: it attacks the labels the ensemble resolved once.
    eot : on a stochastic model, the gradient draws of every member that takes ``eot``
        (replacing the member's own); ignored on a deterministic one.
    recheck : fresh draws of a stochastic model under which a member's example must be
        misclassified (its deployed prediction wrong every time) to count as a break.

    Returns
    -------
    AttackResult with ``broken_by`` (the index of the member that broke each image, -1 where
    none did) and ``min_norm`` (the breaking example's perturbation norm in ``norm``, inf where
    none). ``x_adv`` is the breaking example, or the first member's last point where no member
    broke the image. ``success`` is the re-checked break.
    """
    eot = check_count("eot", eot)
    recheck = check_count("recheck", recheck)
    s = begin(SPEC, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed,
              generator=generator, eps=eps, norm=norm, eot=eot)  # fmt: skip
    assert s.eps is not None and s.norm is not None
    x, labels, base, noisy = s.x, s.labels, s.seed, s.stochastic
    if members is None:
        raise ValueError(
            "members: none given; list attack configs, or build the ensemble as "
            "AttackConfig('worst_case', eps=...), which fills in DEFAULT_MEMBERS"
        )
    chosen = tuple(members)
    if not chosen:
        raise ValueError("members must list at least one attack")
    for i, member in enumerate(chosen):
        problem = member_problem(member, s.eps, s.norm)
        if problem:
            raise ValueError(f"members[{i}]: {problem}")

    batch = x.shape[0]
    bshape = (batch,) + (1,) * (x.dim() - 1)
    draws = recheck if noisy else 1
    broken_by = torch.full((batch,), -1, dtype=torch.long, device=x.device)
    x_adv = x.clone()
    for k, member in enumerate(chosen):
        member = dataclasses.replace(member, clip=s.box, label_mode="true", targeted=targeted)
        if noisy and member.spec.takes_eot:
            member = dataclasses.replace(member, eot=eot)
        robust = broken_by < 0
        if k == 0:
            idx = None  # every image: no read
        else:
            idx = robust.nonzero().squeeze(1)  # one host read per member, outside its loop
            if idx.numel() == 0:
                break
        xs, ls = (x, labels) if idx is None else (x[idx], labels[idx])
        res: AttackResult = member.spec.function(model, xs, ls, seed=derive_seed(base, k), **member.kwargs())
        broke = res.success
        for r in range(draws):  # re-check under fresh draws: broken every time
            logits = model_logits(model, res.x_adv, derive_seed(base, k, 0x5EED, r))
            broke = broke & decide(logits, ls, targeted)[1]
        if idx is None:
            broken_by = torch.where(broke, torch.full_like(broken_by, k), broken_by)
            x_adv = res.x_adv.clone()
        else:
            sub = broken_by[idx]
            broken_by[idx] = torch.where(broke, torch.full_like(sub, k), sub)
            x_adv[idx] = torch.where(broke.view((-1,) + bshape[1:]), res.x_adv, x_adv[idx])
    out = finish(model, x, x_adv, labels, targeted, base)
    success = (broken_by >= 0) & out.success
    broken_by = torch.where(success, broken_by, torch.full_like(broken_by, -1))
    size = out.linf if s.norm == "linf" else out.l2
    min_norm = torch.where(success, size, torch.full_like(size, math.inf))
    return dataclasses.replace(out, success=success, broken_by=broken_by, min_norm=min_norm)


SPEC = AttackSpec(
    "worst_case", worst_case, bounded=True, white_box=True, iterative=True, fixed=("recheck",),
    derived={"members": default_members}, check=check_config,
)  # fmt: skip
