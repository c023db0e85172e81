"""Attack configurations: one frozen, validated, hashable record per attack job, and the dispatch.

A sweep builds its attack jobs from :class:`AttackConfig` records (from YAML/TOML through
:func:`medhpc.config.from_dict`, or in Python) and runs each with :func:`run_attack`. Settings an
attack does not use stay ``None``; settings it uses and the file leaves out are filled with that
attack's defaults on construction, so the saved config and its hash say exactly what ran.
Setting a parameter the chosen attack does not take is an error (a typo'd sweep would
otherwise run something else than intended).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from medhpc.attacks.apgd import apgd_ce
from medhpc.attacks.common import AttackResult, finish, resolve_labels
from medhpc.attacks.cw import cw_l2
from medhpc.attacks.fgsm import fgsm
from medhpc.attacks.pgd import pgd
from medhpc.attacks.spsa import spsa
from medhpc.config import ConfigError, _Bad, nohash

AttackName = Literal["none", "fgsm", "pgd", "cw_l2", "spsa", "apgd_ce"]
ATTACKS: tuple[str, ...] = ("none", "fgsm", "pgd", "cw_l2", "spsa", "apgd_ce")

#: Per attack, the optional parameters it takes and their defaults (CleverHans' where it has
#: them; PGD's step size defaults to 2.5 ε / steps, capped at ε, after Madry et al.).
DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "fgsm": {"norm": "linf", "eot": 1},
    "pgd": {"norm": "linf", "steps": 10, "step_size": None, "random_init": True, "eot": 1},
    "cw_l2": {
        "steps": 1000, "search_steps": 5, "lr": 5e-3, "initial_const": 1e-2, "confidence": 0.0,
        "warm_start": True, "eot": 1,
    },
    "spsa": {
        "norm": "linf", "steps": 5, "lr": 0.01, "delta": 0.01, "samples": 128, "random_init": False,
        "early_stop_loss": None,
    },
    "apgd_ce": {"norm": "linf", "steps": 100, "restarts": 1, "random_init": True, "eot": 1},
}  # fmt: skip
#: Attacks bounded by an ε-ball (``eps`` required).
BOUNDED: tuple[str, ...] = ("fgsm", "pgd", "spsa", "apgd_ce")
_OPTIONAL = (
    "norm", "steps", "step_size", "random_init", "eot", "search_steps", "lr", "initial_const",
    "confidence", "warm_start", "delta", "samples", "early_stop_loss", "restarts",
)  # fmt: skip


class AttackConfigError(ConfigError, _Bad):
    """A ConfigError raised on construction; ``medhpc.config.from_dict`` adds the file name."""

    def __init__(self, key: str, message: str) -> None:
        _Bad.__init__(self, key, message)
        Exception.__init__(self, f"{key}: {message}")


@dataclass(frozen=True)
class AttackConfig:
    """One attack and all its parameters.

    ``attack`` is one of ``none`` (clean evaluation), ``fgsm``, ``pgd``, ``cw_l2``, ``spsa``,
    ``apgd_ce``. ``eps`` is required by the bounded attacks (fgsm, pgd, spsa, apgd_ce) and
    must be left out for none and cw_l2. ``label_mode`` "pred" attacks the model's own
    predictions (the original scripts' y = None); "true" the true labels; with ``targeted`` the
    labels given to :func:`run_attack` are the targets. ``clip`` None disables clipping to the
    pixel range (the scripts' FGSM/PGD/SPSA; CW needs a finite box). ``max_batch_bytes`` only
    sets SPSA's probe memory per model call (None: the device's default); it does not change
    the result, so it is not hashed.
    """

    attack: AttackName
    eps: float | None = None
    norm: Literal["linf", "l2"] | None = None
    steps: int | None = None
    step_size: float | None = None
    random_init: bool | None = None
    eot: int | None = None
    search_steps: int | None = None
    lr: float | None = None
    initial_const: float | None = None
    confidence: float | None = None
    warm_start: bool | None = None
    delta: float | None = None
    samples: int | None = None
    early_stop_loss: float | None = None
    restarts: int | None = None
    targeted: bool = False
    label_mode: Literal["true", "pred"] = "true"
    clip: tuple[float, float] | None = (0.0, 1.0)
    max_batch_bytes: int | None = nohash(None)

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise AttackConfigError(
                "attack", f"must be one of {', '.join(map(repr, ATTACKS))}, got {self.attack!r}"
            )
        defaults = DEFAULTS[self.attack]
        for key in _OPTIONAL:
            value = getattr(self, key)
            if key not in defaults:
                if value is not None:
                    raise AttackConfigError(
                        key, f"not a parameter of {self.attack!r} (it takes: {_takes(self.attack)})"
                    )
            elif value is None and defaults[key] is not None:
                object.__setattr__(self, key, defaults[key])
        self._check_values()
        if self.attack == "pgd" and self.step_size is None:
            assert self.eps is not None and self.steps is not None
            object.__setattr__(self, "step_size", min(self.eps, 2.5 * self.eps / self.steps))

    def _check_values(self) -> None:
        def need(key: str, ok: bool, what: str) -> None:
            if not ok:
                raise AttackConfigError(key, f"{what}, got {getattr(self, key)!r}")

        if self.attack in BOUNDED:
            need("eps", self.eps is not None, f"required by {self.attack!r}")
            need("eps", self.eps is not None and _real(self.eps) and self.eps >= 0, "must be a number >= 0")
        else:
            need("eps", self.eps is None, f"{self.attack!r} is not bounded by an ε-ball; leave eps out")
        if self.attack == "fgsm":
            need("steps", self.steps is None, "FGSM is one step")
        for key in ("steps", "eot", "search_steps", "samples", "restarts"):
            value = getattr(self, key)
            if value is not None:
                need(
                    key,
                    isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    "must be an integer >= 1",
                )
        if self.step_size is not None:
            need("step_size", _real(self.step_size) and self.step_size >= 0, "must be a number >= 0")
        for key in ("lr", "initial_const", "delta"):
            value = getattr(self, key)
            if value is not None:
                need(key, _real(value) and value > 0, "must be a number > 0")
        if self.confidence is not None:
            need("confidence", _real(self.confidence) and self.confidence >= 0, "must be a number >= 0")
        if self.early_stop_loss is not None:
            need("early_stop_loss", _real(self.early_stop_loss), "must be a number")
        for key in ("random_init", "warm_start"):
            value = getattr(self, key)
            if value is not None:
                need(key, isinstance(value, bool), "must be true or false")
        if self.norm is not None:
            need("norm", self.norm in ("linf", "l2"), "must be 'linf' or 'l2'")
        need("label_mode", self.label_mode in ("true", "pred"), "must be 'true' or 'pred'")
        if self.targeted:
            need(
                "label_mode",
                self.label_mode == "true",
                "targeted attacks take their targets as labels: use 'true'",
            )
            need("targeted", self.attack != "none", "'none' cannot be targeted")
        if self.clip is not None:
            ok = len(self.clip) == 2 and all(_real(v) for v in self.clip) and self.clip[0] < self.clip[1]
            need("clip", ok, "must be [min, max] with min < max, or null")
        if self.attack == "cw_l2":
            need(
                "clip",
                self.clip is not None and all(math.isfinite(v) for v in self.clip),
                "CW needs a finite box",
            )
        if self.max_batch_bytes is not None:
            ok = isinstance(self.max_batch_bytes, int) and not isinstance(self.max_batch_bytes, bool)
            need("max_batch_bytes", ok and self.max_batch_bytes >= 1, "must be an integer >= 1 or null")

    def _check(self) -> None:
        """Validation hook of :func:`medhpc.config.from_dict` (construction already checked)."""
        self._check_values()

    @property
    def name(self) -> str:
        """A short human label, e.g. ``pgd-linf-eps0.02-s5`` (the hash names outputs)."""
        parts: list[str] = [self.attack]
        if self.norm is not None and self.attack != "cw_l2":
            parts.append(self.norm)
        if self.eps is not None:
            parts.append(f"eps{self.eps:g}")
        if self.steps is not None and self.attack not in ("fgsm",):
            parts.append(f"s{self.steps}")
        if self.targeted:
            parts.append("targeted")
        if self.eot not in (None, 1):
            parts.append(f"eot{self.eot}")
        return "-".join(parts)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the attack function this config calls."""
        out: dict[str, Any] = {"clip": self.clip, "label_mode": self.label_mode, "targeted": self.targeted}
        if self.eps is not None:
            out["eps"] = self.eps
        for key in DEFAULTS[self.attack]:
            out[key] = getattr(self, key)
        if self.attack == "spsa":
            out["max_batch_bytes"] = self.max_batch_bytes
        return out


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _takes(attack: str) -> str:
    return ", ".join(DEFAULTS[attack]) or "no parameters"


_FUNCTIONS: dict[str, Callable[..., AttackResult]] = {
    "fgsm": fgsm,
    "pgd": pgd,
    "cw_l2": cw_l2,
    "spsa": spsa,
    "apgd_ce": apgd_ce,
}


def run_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, cfg: AttackConfig, seed: int = 0
) -> AttackResult:
    """Run the attack ``cfg`` describes on a batch.

    ``y`` are the true labels (or, for a targeted config, the targets); ``None`` attacks the
    model's predictions. ``seed`` names every random draw, so a sweep job is reproducible.
    Attack ``none`` returns the clean images with their predictions (success all False).
    """
    if not isinstance(cfg, AttackConfig):
        raise TypeError(f"cfg must be an AttackConfig, got {type(cfg).__name__}")
    if cfg.attack == "none":
        labels = resolve_labels(model, x.detach(), y, cfg.label_mode if y is not None else "pred", seed)
        return finish(model, x.detach(), x.detach(), labels, False, seed)
    return _FUNCTIONS[cfg.attack](model, x, y, seed=seed, **cfg.kwargs())


def paper_attacks(label_mode: Literal["true", "pred"] = "pred") -> list[AttackConfig]:
    """The first seed's Appendix B/C rows: what the robustness tables report per model.

    No attack; FGSM ε 0.02; CW-L2 at CleverHans' defaults; PGD L∞ ε 0.02, step 0.01, 1 / 2 / 5
    iterations; SPSA L∞ 5 iterations at ε 0.02, 0.05, 0.1, 0.5, 1.0 (CleverHans' lr, δ and 128
    samples). ``label_mode`` "pred" is the scripts' (attack the model's own predictions);
    medhpc clips to [0, 1] where the scripts did not (see reference-facts §4).
    """
    rows = [
        AttackConfig("none", label_mode=label_mode),
        AttackConfig("fgsm", eps=0.02, label_mode=label_mode),
    ]
    rows.append(AttackConfig("cw_l2", label_mode=label_mode))
    rows += [AttackConfig("pgd", eps=0.02, step_size=0.01, steps=s, label_mode=label_mode) for s in (1, 2, 5)]
    rows += [AttackConfig("spsa", eps=e, steps=5, label_mode=label_mode) for e in (0.02, 0.05, 0.1, 0.5, 1.0)]
    return rows


__all__ = [
    "ATTACKS",
    "AttackConfig",
    "AttackConfigError",
    "paper_attacks",
    "run_attack",
]
