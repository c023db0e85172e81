"""Attack configurations: one frozen, validated, hashable record per attack job, and the dispatch.

A sweep builds its attack jobs from :class:`AttackConfig` records (from YAML/TOML through
:func:`medhpc.config.from_dict`, or in Python) and runs each with :func:`run_attack`. Settings an
attack does not use stay ``None``; settings it uses and the file leaves out are filled with that
attack's defaults on construction, so the saved config and its hash say exactly what ran.
Setting a parameter the chosen attack does not take is an error (a typo'd sweep would
otherwise run something else than intended).

Which parameters an attack takes, and their defaults, are read from its function's signature
through its :class:`~medhpc.attacks.spec.AttackSpec`; what values a parameter accepts is
declared once, on its field here. A parameter added later is declared with
``param(check, added_later=True)``, so that existing configs keep their hashes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from medhpc.attacks.common import AttackResult
from medhpc.attacks.detector import SCORES, SHORT, Detector
from medhpc.attacks.registry import ATTACKS, get_attack
from medhpc.attacks.spec import AttackSpec
from medhpc.config import WHEN_SET, ConfigError, _Bad, nohash

Check = Callable[[Any], str | None]


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _count(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else "must be an integer >= 1"


def _nonnegative(value: Any) -> str | None:
    return None if _real(value) and value >= 0 else "must be a number >= 0"


def _positive(value: Any) -> str | None:
    return None if _real(value) and value > 0 else "must be a number > 0"


def _number(value: Any) -> str | None:
    return None if _real(value) else "must be a number"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _norm(value: Any) -> str | None:
    return None if value in ("linf", "l2") else "must be 'linf' or 'l2'"


def _loss(value: Any) -> str | None:
    return None if value in ("ce", "margin", "dlr") else "must be 'ce', 'margin' or 'dlr'"


def _fraction(value: Any) -> str | None:
    return None if _real(value) and 0 < value <= 1 else "must be a number in (0, 1]"


def _score(value: Any) -> str | None:
    return None if value in SCORES else f"must be one of {', '.join(map(repr, SCORES))}"


def _open_fraction(value: Any) -> str | None:
    return None if _real(value) and 0 < value < 1 else "must be a number in (0, 1)"


def _members(value: Any) -> str | None:
    ok = isinstance(value, tuple) and len(value) > 0
    return None if ok else "must list at least one attack config"


def param(check: Check, *, added_later: bool = False) -> Any:
    """A tunable attack parameter: None unless the attack takes it; ``check`` says what it accepts.

    ``added_later=True`` for a parameter added after configs were hashed: it then enters the
    hash only when set (:func:`medhpc.config.hashed_when_set`), so every existing attack
    config, which leaves it None, keeps its hash and its outputs.
    """
    metadata: dict[str, Any] = {"check": check}
    if added_later:
        metadata["hash"] = WHEN_SET
    return field(default=None, metadata=metadata)


class AttackConfigError(ConfigError, _Bad):
    """A ConfigError raised on construction; ``medhpc.config.from_dict`` adds the file name."""

    def __init__(self, key: str, message: str) -> None:
        _Bad.__init__(self, key, message)
        Exception.__init__(self, f"{key}: {message}")


@dataclass(frozen=True)
class AttackConfig:
    """One attack and all its parameters.

    ``attack`` is the name of a registered attack (:data:`ATTACKS`): ``none`` (clean
    evaluation), ``fgsm``, ``pgd``, ``cw_l2``, ``spsa``, ``apgd_ce``, ``apgd`` (its ``loss``:
    ``ce``, ``margin``, ``dlr``), ``fab``, ``square``, ``worst_case`` (its ``members`` are
    attack configs themselves), ``adaptive`` (PGD against the classifier and an uncertainty
    detector: its ``score`` thresholded at ``fpr`` on clean validation images). ``eps`` is required by
    the bounded attacks and must be left out for the others. ``label_mode`` "pred" attacks the
    model's own predictions (the original scripts' y = None); "true" the true labels; with
    ``targeted`` the labels given to :func:`run_attack` are the targets. ``clip`` None
    disables clipping to the pixel range (the scripts' FGSM/PGD/SPSA; CW needs a finite box).
    ``max_batch_bytes`` only sets SPSA's probe memory per model call (None: the device's
    default); it does not change the result, so it is not hashed.
    """

    attack: str
    eps: float | None = None
    norm: Literal["linf", "l2"] | None = param(_norm)
    steps: int | None = param(_count)
    step_size: float | None = param(_nonnegative)
    random_init: bool | None = param(_flag)
    eot: int | None = param(_count)
    search_steps: int | None = param(_count)
    lr: float | None = param(_positive)
    initial_const: float | None = param(_positive)
    confidence: float | None = param(_nonnegative)
    warm_start: bool | None = param(_flag)
    delta: float | None = param(_positive)
    samples: int | None = param(_count)
    early_stop_loss: float | None = param(_number)
    restarts: int | None = param(_count)
    loss: Literal["ce", "margin", "dlr"] | None = param(_loss, added_later=True)
    queries: int | None = param(_count, added_later=True)
    p_init: float | None = param(_fraction, added_later=True)
    abort_early: bool | None = param(_flag, added_later=True)
    abort_every: int | None = param(_count, added_later=True)
    members: tuple[AttackConfig, ...] | None = param(_members, added_later=True)
    score: Literal["predictive_entropy", "mutual_information", "variance"] | None = param(_score, added_later=True)
    fpr: float | None = param(_open_fraction, added_later=True)
    target_quantile: float | None = param(_fraction, added_later=True)
    initial_lambda: float | None = param(_nonnegative, added_later=True)
    targeted: bool = False
    label_mode: Literal["true", "pred"] = "true"
    clip: tuple[float, float] | None = (0.0, 1.0)
    max_batch_bytes: int | None = nohash(None)

    def __post_init__(self) -> None:
        spec = self.spec
        takes = spec.parameters(TUNABLE)
        for key in TUNABLE:
            value = getattr(self, key)
            if key not in takes:
                if value is not None:
                    raise AttackConfigError(key, f"not a parameter of {self.attack!r} (it takes: {_takes(spec)})")
            elif value is None and takes[key] is not None:
                object.__setattr__(self, key, takes[key])
        self._check_values()
        settings = dataclasses.asdict(self)
        for key, rule in spec.derived.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, _nested(rule(settings)))
        if spec.derived:
            self._check_values()

    @property
    def spec(self) -> AttackSpec:
        """The attack's registered facts (raises a config error for an unknown name)."""
        try:
            return get_attack(self.attack)
        except ValueError:
            raise AttackConfigError(
                "attack", f"must be one of {', '.join(map(repr, ATTACKS))}, got {self.attack!r}"
            ) from None

    def _check_values(self) -> None:
        def need(key: str, ok: bool, what: str) -> None:
            if not ok:
                raise AttackConfigError(key, f"{what}, got {getattr(self, key)!r}")

        spec = self.spec
        if spec.bounded:
            need("eps", self.eps is not None, f"required by {self.attack!r}")
            need("eps", self.eps is not None and _real(self.eps) and self.eps >= 0, "must be a number >= 0")
        else:
            need("eps", self.eps is None, f"{self.attack!r} is not bounded by an ε-ball; leave eps out")
        for key, check in TUNABLE.items():
            value = getattr(self, key)
            if value is not None:
                problem = check(value)
                need(key, problem is None, problem or "")
        if spec.check is not None:
            found = spec.check({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
            if found is not None:
                raise AttackConfigError(*found)
        need("label_mode", self.label_mode in ("true", "pred"), "must be 'true' or 'pred'")
        if self.targeted:
            need(
                "label_mode",
                self.label_mode == "true",
                "targeted attacks take their targets as labels: use 'true'",
            )
            need("targeted", spec.perturbs, f"{self.attack!r} cannot be targeted")
        if self.clip is not None:
            ok = len(self.clip) == 2 and all(_real(v) for v in self.clip) and self.clip[0] < self.clip[1]
            need("clip", ok, "must be [min, max] with min < max, or null")
        if spec.finite_clip:
            need(
                "clip",
                self.clip is not None and all(math.isfinite(v) for v in self.clip),
                f"{self.attack} needs a finite box",
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
        if self.norm is not None:
            parts.append(self.norm)
        if self.eps is not None:
            parts.append(f"eps{self.eps:g}")
        if self.steps is not None:
            parts.append(f"s{self.steps}")
        if self.loss is not None:
            parts.append(self.loss)
        if self.queries is not None:
            parts.append(f"q{self.queries}")
        if self.score is not None:
            parts.append(SHORT[self.score])
        if self.targeted:
            parts.append("targeted")
        if self.eot not in (None, 1):
            parts.append(f"eot{self.eot}")
        if self.members is not None:
            parts.append("+".join(m.attack + (f"_{m.loss}" if m.loss else "") for m in self.members))
        return "-".join(parts)

    def non_adaptive(self) -> AttackConfig | None:
        """For an attack on a detector, the attack it is when it ignores the detector (its
        spec's ``plain``: PGD for ``adaptive``), with every setting the two share; None for
        other attacks. The report sets the two side by side."""
        plain = self.spec.plain
        if plain is None:
            return None
        takes = get_attack(plain).parameters(TUNABLE)
        shared = {k: getattr(self, k) for k in takes}
        return AttackConfig(plain, eps=self.eps, targeted=self.targeted, label_mode=self.label_mode,
                            clip=self.clip, **shared)  # fmt: skip

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the attack function this config calls."""
        spec = self.spec
        out: dict[str, Any] = {"clip": self.clip, "label_mode": self.label_mode, "targeted": self.targeted}
        if self.eps is not None:
            out["eps"] = self.eps
        for key in (*spec.parameters(TUNABLE), *spec.runtime):
            out[key] = getattr(self, key)
        return out


#: The tunable attack parameters (the fields declared with :func:`param`) and their checks.
TUNABLE: dict[str, Check] = {
    f.name: f.metadata["check"] for f in dataclasses.fields(AttackConfig) if "check" in f.metadata
}


def _nested(value: Any) -> Any:
    """A derived value as a field holds it: mappings (the worst case's default members) become
    attack configs."""
    if isinstance(value, tuple) and value and all(isinstance(v, dict) for v in value):
        return tuple(AttackConfig(**v) for v in value)
    return value


def _takes(spec: AttackSpec) -> str:
    return ", ".join(spec.parameters(TUNABLE)) or "no parameters"


def run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    cfg: AttackConfig,
    seed: int = 0,
    *,
    detector: Detector | None = None,
) -> AttackResult:
    """Run the attack ``cfg`` describes on a batch.

    ``y`` are the true labels (or, for a targeted config, the targets); ``None`` attacks the
    model's predictions. ``seed`` names every random draw, so a sweep job is reproducible.
    Attack ``none`` returns the clean images with their predictions (success all False).
    ``detector``: the fitted detector an attack whose spec is ``calibrated`` attacks (see
    :func:`medhpc.attacks.detector.calibrate`); refused for any other attack.
    """
    if not isinstance(cfg, AttackConfig):
        raise TypeError(f"cfg must be an AttackConfig, got {type(cfg).__name__}")
    kwargs = cfg.kwargs()
    if cfg.spec.calibrated:
        if detector is None:
            raise ValueError(f"{cfg.name} attacks an uncertainty detector: fit it on clean validation images "
                             "(medhpc.attacks.detector.calibrate) and pass it as detector=")  # fmt: skip
        kwargs["detector"] = detector
    elif detector is not None:
        raise ValueError(f"{cfg.name} attacks no detector; detector= is only for calibrated attacks")
    result: AttackResult = cfg.spec.function(model, x, y, seed=seed, **kwargs)
    return result


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
    "TUNABLE",
    "AttackConfig",
    "AttackConfigError",
    "paper_attacks",
    "param",
    "run_attack",
]
