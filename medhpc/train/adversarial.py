"""Adversarial training: the ``adversarial:`` section of a training config and one loss per method.

Three methods, one :class:`MethodSpec` each in :data:`METHODS` (the loop reads the spec; it
compares no method names):

* ``pgd``: PGD-AT (Madry et al. 2018): cross-entropy on PGD examples (random start in the
  ε-ball, ``steps`` steps of ``step_size``, default 2.5 ε / steps: ε/4 at 10 steps), made
  by the package's own :func:`medhpc.attacks.pgd`.
* ``trades``: TRADES (Zhang et al. 2019): CE(f(x), y) + β · KL(p(x) ‖ p(x′)), x′ from PGD
  ascent on that KL in the ε-ball (the inner maximisation, written with the attacks' common
  helpers: random start, ascent direction, projection), β = 6 by default.
* ``fgsm``: fast adversarial training (Wong et al. 2020, *Fast is better than free*): one
  FGSM step of α = 1.25 ε (:func:`medhpc.attacks.fgsm`) from a uniform random start in the
  ε-ball, projected back onto it.

As in the references, examples are crafted with the model in evaluation mode (BatchNorm
statistics fixed, dropout off; a VIB head averages its evaluation draws, with its noise
pinned per step by the attacks' own seeds) and the step is then taken in training mode. All
of it runs batched on the device, inside the loop's autocast (bf16 on CUDA under
``precision: auto``), with no host synchronisation. Every random draw of an attack comes from
a seed derived from the run's seed, the epoch and the batch (:func:`batch_seed`), never from
torch's global generator, so a resumed run crafts the same examples as an uninterrupted one
and the VIB head's training noise (the global stream) is the same as in plain training.

L∞ only, in the model's [0, 1] pixel range. When training is adversarial the kept model is
the one with the lowest *robust* validation loss: PGD with ``val_steps`` steps (step 2.5 ε /
steps, random start) at the config's ε on the validation split, seeded per epoch
(:func:`validation_perturb`); the clean validation loss is reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medhpc.attacks.common import (
    ascent_direction,
    clamp_box,
    derive_seed,
    eot_gradient,
    model_logits,
    project,
    project_to_feasible,
    random_start,
)
from medhpc.attacks.fgsm import fgsm
from medhpc.attacks.pgd import default_step_size, pgd
from medhpc.config import bad
from medhpc.models.classifier import Classifier, TrainOutput
from medhpc.models.noise import is_stochastic

Method = Literal["pgd", "trades", "fgsm"]

#: The pixel range the model's inputs live in (cached images are [0, 1]).
BOX = (0.0, 1.0)
#: Tags mixed into :func:`derive_seed` so training and validation draws never coincide.
_TRAIN_TAG, _VAL_TAG, _OTHER_TAG = 0xAD7, 0x7A1, 0xF17


#: The plain training loss of one forward output: cross-entropy (+ auxiliary, + β·KL of a VIB head).
PlainLoss = Callable[[TrainOutput, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AdversarialConfig:
    """How a run trains on adversarial examples (``adversarial:``; absent or null: plain training).

    ``method``: ``pgd`` (PGD-AT), ``trades`` or ``fgsm`` (fast AT with random init). ``eps``:
    the L∞ radius in [0, 1] pixel units. ``steps`` / ``step_size``: the inner attack's (left
    out: PGD-AT and TRADES 10 steps of 2.5 ε / steps; fast AT one step of 1.25 ε, and only one).
    ``random_init``: start the inner attack uniformly in the ε-ball (without it PGD starts
    at x, and TRADES at x + 0.001·N(0, I) as Zhang et al.'s code does: the KL's gradient
    vanishes at x itself). ``beta``: TRADES' weight of the robust term (6 when left out; the
    other methods take none). ``val_steps``: steps of the validation PGD that chooses the kept
    model. Left-out values are filled in, so the saved config and its hash say what ran.
    """

    method: Method
    eps: float
    steps: int | None = None
    step_size: float | None = None
    random_init: bool = True
    beta: float | None = None
    val_steps: int = 10

    def __post_init__(self) -> None:
        spec = METHODS.get(self.method)
        if spec is None or not isinstance(self.eps, (int, float)) or not self.eps > 0:
            return  # _check names the key
        steps = self.steps if self.steps is not None else spec.default_steps
        if self.steps is None:
            object.__setattr__(self, "steps", steps)
        if self.step_size is None and isinstance(steps, int) and steps >= 1:
            object.__setattr__(self, "step_size", spec.default_step_size(float(self.eps), steps))
        if self.beta is None and spec.default_beta is not None:
            object.__setattr__(self, "beta", spec.default_beta)

    def _check(self) -> None:
        spec = METHODS.get(self.method)
        if spec is None:
            raise bad("method", f"must be one of {', '.join(map(repr, METHODS))}, got {self.method!r}")
        if not 0.0 < self.eps <= 1.0:
            raise bad("eps", f"must be in (0, 1] (pixel units of [0, 1] images), got {self.eps}")
        assert self.steps is not None  # filled in by __post_init__
        if self.steps < 1:
            raise bad("steps", f"must be >= 1, got {self.steps}")
        if spec.one_step and self.steps != 1:
            raise bad("steps", f"{spec.title} takes one step, got {self.steps}")
        if self.step_size is None or not self.step_size > 0.0:
            raise bad("step_size", f"must be > 0, got {self.step_size}")
        if spec.default_beta is None and self.beta is not None:
            raise bad("beta", f"only TRADES weighs a robust term; {spec.title} takes no beta")
        if self.beta is not None and not self.beta >= 0.0:
            raise bad("beta", f"must be >= 0, got {self.beta}")
        if self.val_steps < 1:
            raise bad("val_steps", f"must be >= 1, got {self.val_steps}")

    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method]


@contextmanager
def crafting(model: nn.Module) -> Iterator[None]:
    """Evaluation mode while the examples are made (BatchNorm statistics fixed, as the
    references do), the previous mode back after (the training step's)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The inner attack's seed for one training batch: a function of the run's seed and the
    batch's place, not of a random stream a resume would shift."""
    return derive_seed(seed, _TRAIN_TAG, epoch, batch)


def _start(x: torch.Tensor, eps: float, random_init: bool, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    if random_init:
        return clamp_box(x + random_start(x, eps, "linf", gen), BOX)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return clamp_box(x + project(1e-3 * noise, "linf", eps), BOX)


def kl_per_image(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ softmax(logits)) per image (B,), in float32 (``p`` probabilities, (B, C))."""
    return (torch.xlogy(p, p) - p * F.log_softmax(logits.float(), dim=-1)).sum(-1)


def trades_examples(model: nn.Module, x: torch.Tensor, cfg: AdversarialConfig, seed: int) -> torch.Tensor:
    """TRADES' inner maximisation: x′ in the ε-ball (and [0, 1]) raising KL(p(x) ‖ p(x′)).

    ``model`` is used as it is (call it in evaluation mode). Signed-gradient steps of
    ``step_size``, each projected back onto the ball, as PGD; the gradient is of the summed
    per-image KL, so an image's example depends on its own loss only.
    """
    assert cfg.steps is not None and cfg.step_size is not None
    stochastic = is_stochastic(model)
    p_clean = torch.softmax(model_logits(model, x, derive_seed(seed, 0xC1EA)).float(), dim=-1)
    x_adv = _start(x.detach(), cfg.eps, cfg.random_init, seed)
    for i in range(cfg.steps):
        grad, _, _ = eot_gradient(
            model, x_adv, lambda logits: kl_per_image(p_clean, logits), eot=1, seed=seed, step=i,
            stochastic=stochastic,
        )  # fmt: skip
        x_adv = clamp_box(x_adv + cfg.step_size * ascent_direction(grad, "linf"), BOX)
        x_adv = project_to_feasible(x, x_adv, "linf", cfg.eps, BOX)
    return x_adv.detach()


# ---------------------------------------------------------------------------------------------
# One training loss per method: (model, x, y, config, seed, plain loss) -> scalar loss.


def pgd_at_loss(
    model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: AdversarialConfig, seed: int, plain: PlainLoss
) -> torch.Tensor:
    """PGD-AT: the plain loss on PGD examples of the batch."""
    assert cfg.steps is not None and cfg.step_size is not None
    with crafting(model):
        x_adv = pgd(model, x, y, eps=cfg.eps, step_size=cfg.step_size, steps=cfg.steps,
                    random_init=cfg.random_init, clip=BOX, seed=seed).x_adv  # fmt: skip
    return plain(model.forward_train(x_adv), y)


def trades_loss(
    model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: AdversarialConfig, seed: int, plain: PlainLoss
) -> torch.Tensor:
    """TRADES: the plain loss on the clean batch + β · KL(p(x) ‖ p(x′)) averaged over the batch
    (both in training mode, gradients through both, as Zhang et al.'s code)."""
    with crafting(model):
        x_adv = trades_examples(model, x, cfg, seed)
    out = model.forward_train(x)
    out_adv = model.forward_train(x_adv)
    robust = kl_per_image(torch.softmax(out.logits.float(), dim=-1), out_adv.logits).mean()
    return plain(out, y) + (cfg.beta or 0.0) * robust


def fast_at_loss(
    model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: AdversarialConfig, seed: int, plain: PlainLoss
) -> torch.Tensor:
    """Fast AT: the plain loss on one FGSM step of ``step_size`` from a random start, projected
    onto the ε-ball around x."""
    assert cfg.step_size is not None
    with crafting(model):
        start = _start(x.detach(), cfg.eps, cfg.random_init, seed)
        stepped = fgsm(model, start, y, eps=cfg.step_size, clip=BOX, seed=seed).x_adv
        x_adv = project_to_feasible(x, stepped, "linf", cfg.eps, BOX)
    return plain(model.forward_train(x_adv), y)


StepLoss = Callable[[Classifier, torch.Tensor, torch.Tensor, AdversarialConfig, int, PlainLoss], torch.Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """One adversarial-training method.

    ``loss`` computes a batch's training loss (crafting included); ``tag`` goes into the run's
    folder name; ``default_steps`` / ``default_step_size(eps, steps)`` fill a config's inner
    attack; ``default_beta`` is TRADES' β (None: the method takes none); ``one_step``: the
    inner attack is a single step.
    """

    name: str
    title: str
    tag: str
    loss: StepLoss
    default_steps: int
    default_step_size: Callable[[float, int], float]
    default_beta: float | None = None
    one_step: bool = False


PGD_AT = MethodSpec("pgd", "PGD-AT", "pgdat", pgd_at_loss, 10, default_step_size)
TRADES = MethodSpec("trades", "TRADES", "trades", trades_loss, 10, default_step_size, default_beta=6.0)
FAST_AT = MethodSpec("fgsm", "fast FGSM-AT", "fastat", fast_at_loss, 1, lambda eps, steps: 1.25 * eps, one_step=True)

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (PGD_AT, TRADES, FAST_AT)}


# ---------------------------------------------------------------------------------------------
# Validation under attack: what chooses the kept model.

#: ``perturb(model, x, y, batch_index) -> x_adv``, what :func:`medhpc.train.evaluate.predict` applies.
Perturb = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


def validation_perturb(cfg: AdversarialConfig, seed: int, epoch: int | None) -> Perturb:
    """PGD at the config's ε with ``val_steps`` steps (step 2.5 ε / steps, random start) on
    each batch, seeded by the run's seed, the (0-based) epoch and the batch: reproducible, and
    the same on a resumed run. ``epoch`` None: a seed of its own (evaluations outside training)."""
    base = derive_seed(seed, _VAL_TAG, epoch) if epoch is not None else derive_seed(seed, _OTHER_TAG)

    def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int) -> torch.Tensor:
        return pgd(model, x, y, eps=cfg.eps, steps=cfg.val_steps, random_init=True, clip=BOX,
                   seed=derive_seed(base, index)).x_adv  # fmt: skip

    return perturb


def describe(cfg: AdversarialConfig) -> str:
    """``PGD-AT ε=0.02, 10 steps of 0.005`` (for logs)."""
    text = f"{cfg.spec.title} eps={cfg.eps:g}, {cfg.steps} step(s) of {cfg.step_size:g}"
    return text + (f", beta={cfg.beta:g}" if cfg.beta is not None else "")
