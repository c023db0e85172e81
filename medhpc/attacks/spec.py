"""What the rest of medhpc knows about an attack: one :class:`AttackSpec`, declared in the
attack's own module and listed once in :mod:`medhpc.attacks.registry`.

Config validation (:class:`medhpc.attacks.AttackConfig`), :func:`medhpc.attacks.run_attack`,
the gradient-masking rules (:mod:`medhpc.attacks.robustness`) and the report read these facts
instead of comparing attack names. An attack's tunable parameters and their defaults are its
function's keyword-only parameters that :class:`AttackConfig` has a field for: the signature
is the one place a default is written.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

#: Keyword arguments every attack takes besides its own parameters (set per run, not tuned).
COMMON: tuple[str, ...] = ("clip", "label_mode", "targeted", "seed", "generator")
#: Keyword arguments that change how fast an attack runs, not its result (left out of hashes).
RUNTIME: tuple[str, ...] = ("max_batch_bytes",)


def _always(config: Mapping[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class AttackSpec:
    """One attack's facts.

    Parameters
    ----------
    name : the ``attack:`` key of a config.
    function : ``function(model, x, y=None, *, ..., seed=0) -> AttackResult``.
    bounded : whether it stays in an ε-ball (then ``eps`` is required; else it must be left out).
    white_box : whether it uses the model's gradients (else it only queries scores).
    iterative : whether it takes more than one step.
    perturbs : False only for the clean evaluation ``none``.
    finite_clip : whether it needs a finite pixel box (CW's tanh change of variables).
    derived : defaults computed from the other settings when left out, e.g. PGD's step size
        from ε and the step count; the function computes the same when given None.
    reaches_surface : whether a config's steps can reach the ε-ball's surface (PGD 1 × 0.01 at
        ε 0.02 cannot, so it may legitimately be weaker than FGSM).
    fixed : keyword-only parameters of the function that no config sets (kept at their
        defaults: APGD's momentum and ρ, PGD's explicit start for the parity tests).
    check : a cross-field check of a config's settings (the worst case's members against its
        ε), returning ``(key, problem)`` or None; single values are checked by their fields.
    calibrated : whether it attacks a classifier together with an uncertainty detector fitted
        on clean validation images (the adaptive attack): the job fits the detector
        (:func:`medhpc.attacks.detector.calibrate`) and :func:`medhpc.attacks.run_attack` passes
        it as ``detector=``. Such an attack trades misclassification for evasion, so it is left
        out of the gradient-masking comparisons between classification attacks.
    plain : for a calibrated attack, the attack it is when it ignores the detector (the
        adaptive attack's λ = 0 round is ``pgd``): the report sets the two side by side.
    """

    name: str
    function: Callable[..., Any]
    bounded: bool
    white_box: bool
    iterative: bool
    perturbs: bool = True
    finite_clip: bool = False
    derived: Mapping[str, Callable[[Mapping[str, Any]], Any]] = field(default_factory=dict)
    reaches_surface: Callable[[Mapping[str, Any]], bool] = _always
    fixed: tuple[str, ...] = ()
    check: Callable[[Mapping[str, Any]], tuple[str, str] | None] | None = None
    calibrated: bool = False
    plain: str | None = None

    @cached_property
    def signature(self) -> dict[str, Any]:
        """Every keyword-only parameter of the function and its default (``inspect.Parameter.empty``
        where it has none)."""
        params = inspect.signature(self.function).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def parameters(self, tunable: Collection[str]) -> dict[str, Any]:
        """The parameters a config may set for this attack (among ``tunable``, the config's
        fields), with the function's defaults."""
        return {k: v for k, v in self.signature.items() if k in tunable and k not in self.fixed}

    @property
    def runtime(self) -> tuple[str, ...]:
        """The speed-only arguments this attack's function takes."""
        return tuple(k for k in RUNTIME if k in self.signature)

    @property
    def takes_eot(self) -> bool:
        """Whether it averages gradients over model draws (expectation over transformation)."""
        return "eot" in self.signature

    @property
    def one_step(self) -> bool:
        """A single gradient step in an ε-ball (FGSM): what masking checks hold against iterative ones."""
        return self.bounded and self.white_box and not self.iterative
