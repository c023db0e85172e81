"""Self-test of the attacks: every registered attack, on a deterministic and a stochastic (VIB)
ResNet50, at the paper's image size and SPSA probe count, with CUDA's sync debug mode set to
"error" so that any host synchronisation inside an attack's loop fails the check.

The step counts are cut to a few (the check is about running right on this node, not about
strength); a newly registered attack is checked without a change here. An ensemble (an attack
that takes ``members``: the worst case) runs its default members at the same cut budgets; it
reads the device once between members, by design, so it runs outside the "error" mode (each
member has just been checked inside it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medhpc.attacks import ATTACKS, AttackConfig, AttackResult, calibrate, run_attack
from medhpc.attacks.config import TUNABLE
from medhpc.attacks.spec import AttackSpec
from medhpc.models import ModelConfig, build_model, is_stochastic
from medhpc.selftest.runner import Check, CheckFailed, Context

EPS = 0.02


def attack_config(spec: AttackSpec, ctx: Context, stochastic: bool) -> AttackConfig:
    """A short run of ``spec`` at this scale: few steps, the paper's SPSA probes, EOT on VIB."""
    sc = ctx.scale
    wanted: dict[str, Any] = {
        "steps": sc.attack_steps,
        "search_steps": 2,
        "samples": sc.spsa_samples,
        "restarts": 1,
        "queries": 4 * sc.attack_steps,
        "eot": 2 if stochastic else 1,
    }
    takes = spec.parameters(TUNABLE)
    params = {k: v for k, v in wanted.items() if k in takes}
    if "members" in takes:  # the default members, each cut to the same budgets
        full = AttackConfig(spec.name, eps=EPS, **params).members or ()
        params["members"] = tuple(
            dataclasses.replace(m, **{k: v for k, v in wanted.items() if k in m.spec.parameters(TUNABLE)})
            for m in full
        )
    return AttackConfig(spec.name, eps=EPS if spec.bounded else None, **params)


def _syncs_between_members(spec: AttackSpec) -> bool:
    """An ensemble reads the device between its members (which images are still robust)."""
    return "members" in spec.parameters(TUNABLE)


def _model(head: str, ctx: Context) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="resnet50", head=head)).eval().to(ctx.device)


def _check_result(res: AttackResult, x: torch.Tensor, spec: AttackSpec, ctx: Context) -> None:
    for name in ("x_adv", "success", "pred", "l2", "linf"):
        t = getattr(res, name)
        if t.device != x.device:
            raise CheckFailed(f"{spec.name}: {name} came back on {t.device}, not {x.device}")
    if not bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all()):
        raise CheckFailed(f"{spec.name}: adversarial images leave [0, 1]")
    if spec.bounded and float(res.linf.max()) > EPS + 1e-6:
        raise CheckFailed(f"{spec.name}: L-inf {float(res.linf.max()):.4g} leaves the eps-ball {EPS}")


def attacks_check(head: str) -> Callable[[Context], str]:
    def run(ctx: Context) -> str:
        model = _model(head, ctx)
        sc = ctx.scale
        g = torch.Generator().manual_seed(5)
        x = torch.rand(sc.attack_batch, 3, sc.attack_size, sc.attack_size, generator=g).to(ctx.device)
        y = (torch.arange(sc.attack_batch) % 2).to(ctx.device)
        stochastic = is_stochastic(model)
        times = []
        for spec in ATTACKS.values():
            cfg = attack_config(spec, ctx, stochastic)
            started = time.perf_counter()
            detector = None
            if spec.calibrated:  # fitted first, outside the sync check (it reads scores on the host)
                score: Any = "mutual_information" if stochastic else "predictive_entropy"
                cfg = dataclasses.replace(cfg, score=score)
                assert cfg.fpr is not None and cfg.target_quantile is not None
                x_val = torch.rand(x.shape, generator=g).to(ctx.device)
                detector = calibrate(model, [(x_val, y)], score=score, fpr=cfg.fpr, target_quantile=cfg.target_quantile)
            if ctx.cuda and not _syncs_between_members(spec):
                torch.cuda.synchronize(ctx.device)
                torch.cuda.set_sync_debug_mode("error")
            try:
                res = run_attack(model, x, y, cfg, seed=1, detector=detector)
            except RuntimeError as exc:
                raise CheckFailed(f"{spec.name}: {exc}".splitlines()[0]) from exc
            finally:
                if ctx.cuda:
                    torch.cuda.set_sync_debug_mode("default")
            ctx.sync()
            times.append(f"{spec.name} {time.perf_counter() - started:.1f}s")
            _check_result(res, x, spec, ctx)
        sync = "no host sync, " if ctx.cuda else ""
        return f"{sc.attack_batch}x3x{sc.attack_size}^2, {sync}SPSA {sc.spsa_samples} probes: {', '.join(times)}"

    return run


CHECKS: tuple[Check, ...] = tuple(
    Check(f"attacks {head}", f"every attack on ResNet50-{head}, sync debug mode 'error'", attacks_check(head))
    for head in ("linear", "vib")
)
