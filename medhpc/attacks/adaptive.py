"""The adaptive attack on a classifier with an uncertainty detector (Carlini & Wagner 2017,
*Adversarial examples are not easily detected*; Athalye et al. 2018; Feng et al. 2024,
*Attacking Bayes*): find x′ in the ε-ball that is misclassified **and** scores at or under the
detector's threshold, so that the system (classifier + abstention) accepts a wrong answer.

Formulation (documented here, proven in ``tests/attacks/test_adaptive.py``):

* Each round is PGD (the same start, steps and projection as :func:`medhpc.attacks.pgd`) on

      CE(f(x′), y) − λ · max(0, U(x′) − τ*)

  per image, where U is the detector's score (:func:`medhpc.attacks.detector.score_torch`)
  from the draws the prediction combines and τ* the detector's ``target``: by default the
  median clean validation score, not the threshold τ. Stopping at τ leaves the adversarial
  scores bunched just under the threshold, which the operating point misses but the
  threshold-free AUROC still separates; pushing to the median makes them look like a typical
  clean image.
* λ is found per image by a search over ``search_steps`` rounds, as CW finds its constant.
  The first round has λ = ``initial_lambda``, by default 0: it is the plain PGD, so per image
  the adaptive attack keeps what the non-adaptive one found and can only improve on it. A
  round that misclassified the image but never under τ* raises λ (to 1 from 0, then ×10 until
  an upper bound is known, then bisection: λ is in units of cross-entropy per unit of score);
  one that never misclassified it lowers λ (bisection towards the last λ that
  misclassified). An image that got under τ* misclassified is done.
* Each image keeps its best iterate over all rounds and steps: misclassified under τ* over
  misclassified under τ over misclassified over the rest; the first example under τ* is kept
  (its score sits near τ*), below that the lower score breaks ties. Every step's forward
  pass already gives the iterate's logits and score (averaged over its EOT draws), so this
  costs one extra pass per round, for the last iterate. An image whose λ is 0 ignores the
  detector: only its round's last iterate counts, as in PGD.
* Stochastic heads: the gradient is averaged over ``eot`` draws of the head (EOT), each
  scoring U from that draw's S reparameterised samples; a round's iterate is judged under
  ``eot`` fresh draws.

With λ = 0 and one round this is exactly :func:`medhpc.attacks.pgd` for the same seed (the
classification loss, the start and the per-step noise draws are PGD's). No host
synchronisation: the search is ``torch.where`` selections.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from medhpc.attacks.common import (
    AttackResult,
    Clip,
    LabelMode,
    ascent_direction,
    begin,
    ce_ascent,
    check_count,
    check_number,
    clamp_box,
    decide,
    derive_seed,
    finish,
    project,
    project_to_feasible,
    random_start,
)
from medhpc.attacks.detector import Detector, check_score, score_torch
from medhpc.attacks.pgd import _reaches_surface, default_step_size
from medhpc.attacks.spec import AttackSpec
from medhpc.models.noise import fixed_noise


def logits_and_draws(model: nn.Module, x: torch.Tensor, stochastic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The prediction's logits (B, C) and the per-draw logits (S, B, C) it combined.

    A :class:`medhpc.models.Classifier` gives both from one pass; another model's prediction
    is ``model(x)`` and its draws ``model.sample_logits(x)`` under the same pinned noise."""
    both = getattr(model, "logits_and_draws", None)
    if callable(both):
        return both(x)
    logits = model(x)
    if not stochastic:
        return logits, logits.unsqueeze(0)
    sample_logits = getattr(model, "sample_logits", None)
    if not callable(sample_logits):
        raise TypeError(f"{type(model).__name__} is stochastic but has no logits_and_draws(x) or sample_logits(x)")
    return logits, sample_logits(x)


def adaptive(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    step_size: float | None = None,
    steps: int = 10,
    norm: str = "linf",
    random_init: bool = True,
    score: str = "predictive_entropy",
    fpr: float = 0.05,
    target_quantile: float = 0.5,
    initial_lambda: float = 0.0,
    search_steps: int = 5,
    eot: int = 1,
    detector: Detector | None = None,
    clip: Clip | None = (0.0, 1.0),
    label_mode: LabelMode = "true",
    targeted: bool = False,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """PGD against the classifier and the detector together (see the module's docstring).

    Parameters
    ----------
    eps, step_size, steps, norm, random_init, eot : each round's PGD, as :func:`medhpc.attacks.pgd`.
    score, fpr, target_quantile : the detector attacked; ``detector`` (fitted with these, by
        :func:`medhpc.attacks.detector.calibrate` on clean validation images) gives its
        threshold τ and target τ*; a detector fitted otherwise is refused.
    initial_lambda : λ at the first round (0: the first round is plain PGD; with one round the
        attack is exactly :func:`medhpc.attacks.pgd`).
    search_steps : rounds of the search over λ.

    Returns the kept iterate per image; ``const`` holds its λ (NaN where no round got the
    image past the detector); ``success`` is misclassification, as for every attack; whether
    the detector rejects it is the report's to measure with the deployed detector.
    """
    steps = check_count("steps", steps)
    search_steps = check_count("search_steps", search_steps)
    lam0 = check_number("initial_lambda", initial_lambda)
    if step_size is not None:
        step_size = check_number("step_size", step_size)
    if not isinstance(detector, Detector):
        raise ValueError(
            "adaptive needs the detector it attacks, fitted on clean validation images "
            "(medhpc.attacks.detector.calibrate), as detector=; got "
            f"{type(detector).__name__}"
        )
    if (detector.score, detector.fpr, detector.target_quantile) != (score, fpr, target_quantile):
        raise ValueError(
            f"the detector was fitted for score {detector.score!r}, fpr {detector.fpr:g}, target_quantile "
            f"{detector.target_quantile:g}; this attack is set for {score!r}, {fpr:g}, {target_quantile:g}"
        )
    s = begin(SPEC, model, x, y, clip=clip, label_mode=label_mode, targeted=targeted, seed=seed,
              generator=generator, eps=eps, norm=norm, eot=eot)  # fmt: skip
    assert s.eps is not None and s.norm is not None
    check_score(score, s.stochastic)
    x, eps_, norm_, box, labels = s.x, s.eps, s.norm, s.box, s.labels
    step = default_step_size(eps_, steps) if step_size is None else step_size
    draws = s.eot if s.stochastic else 1
    tau, target = float(detector.threshold), float(detector.target)
    view = (-1,) + (1,) * (x.dim() - 1)

    def noise(*parts: int) -> contextlib.AbstractContextManager[None]:
        return fixed_noise(model, derive_seed(s.seed, *parts)) if s.stochastic else contextlib.nullcontext()

    def gradient(x_adv: torch.Tensor, lam: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # pgd's eot_gradient with the detector's hinge added: the same draws, sums and order.
        # Also returns the logits and score at x_adv, averaged over the draws (no extra pass).
        var = x_adv.detach().requires_grad_(True)
        sums: list[torch.Tensor] = []
        for m in range(draws):
            with torch.enable_grad(), noise(index, m):
                logits, per_draw = logits_and_draws(model, var, s.stochastic)
                u = score_torch(score, per_draw)
                loss = ce_ascent(logits, labels, targeted) - lam * torch.relu(u - target)
                (g,) = torch.autograd.grad(loss.sum(), var)
            parts = [g, logits.detach(), u.detach()]
            sums = parts if not sums else [a + b for a, b in zip(sums, parts, strict=True)]
        grad, logits, u = sums if draws == 1 else [t / draws for t in sums]
        return grad, logits, u

    def judge(x_adv: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits_sum: torch.Tensor | None = None
        u_sum: torch.Tensor | None = None
        with torch.no_grad():
            for m in range(draws):
                with noise(0xAD, r, m):
                    logits, per_draw = logits_and_draws(model, x_adv, s.stochastic)
                    u = score_torch(score, per_draw)
                logits_sum = logits if logits_sum is None else logits_sum + logits
                u_sum = u if u_sum is None else u_sum + u
        assert logits_sum is not None and u_sum is not None
        return logits_sum / draws, u_sum / draws

    b = x.shape[0]
    lam = torch.full((b,), lam0, device=x.device, dtype=torch.float32)
    lo = torch.zeros_like(lam)
    hi = torch.full_like(lam, float("inf"))
    best = x.clone()
    best_key = torch.full((b,), -1, device=x.device, dtype=torch.long)
    best_u = torch.full((b,), float("inf"), device=x.device)
    best_lam = torch.full((b,), float("nan"), device=x.device)

    def offer(x_c: torch.Tensor, logits: torch.Tensor, u: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Keep ``x_c`` where it beats the image's best so far; returns its key."""
        nonlocal best, best_key, best_u, best_lam
        _, wrong = decide(logits, labels, targeted)
        key = torch.where(wrong & (u <= target), 3, torch.where(wrong & (u <= tau), 2, wrong.long()))
        # the first example past the target is kept (its score sits near the target, a typical
        # clean score); below that, the lower score
        tie = (key == best_key) & (key >= 1) & (key <= 2) & (u < best_u)
        better = allowed & ((key > best_key) | tie)
        best = torch.where(better.view(view), x_c, best)
        best_key = torch.where(better, key, best_key)
        best_u = torch.where(better, u, best_u)
        best_lam = torch.where(better, lam, best_lam)
        return key

    for r in range(search_steps):
        delta = random_start(x, eps_, norm_, s.generator) if random_init else torch.zeros_like(x)
        x_adv = clamp_box(x + project(delta, norm_, eps_), box)
        aware = lam > 0  # with λ = 0 an image's round is plain PGD: only its last iterate counts
        round_key = torch.full_like(best_key, -1)
        for i in range(steps):
            g, logits, u = gradient(x_adv, lam, r * steps + i)
            round_key = torch.maximum(round_key, torch.where(aware, offer(x_adv, logits, u, aware), -1))
            x_adv = clamp_box(x_adv + step * ascent_direction(g, norm_), box)
            x_adv = project_to_feasible(x, x_adv, norm_, eps_, box)
        logits, u = judge(x_adv, r)
        round_key = torch.maximum(round_key, offer(x_adv, logits, u, torch.ones_like(aware)))
        done = best_key == 3
        up = (round_key >= 1) & ~done  # misclassified but still suspect: weigh the detector more
        down = (round_key < 1) & ~done  # never misclassified: weigh it less
        lo = torch.where(up, lam, lo)
        hi = torch.where(down, lam, hi)
        raised = torch.where(torch.isinf(hi), torch.where(lam > 0, lam * 10, 1.0), (lo + hi) / 2)
        lam = torch.where(up, raised, torch.where(down, (lo + hi) / 2, lam))
    const = torch.where(best_key >= 2, best_lam, torch.full_like(best_lam, float("nan")))
    return finish(model, x, best, labels, targeted, s.seed, const)


SPEC = AttackSpec(
    "adaptive", adaptive, bounded=True, white_box=True, iterative=True, calibrated=True, plain="pgd",
    derived={"step_size": lambda c: default_step_size(c["eps"], c["steps"])},
    reaches_surface=_reaches_surface, fixed=("detector",),
)  # fmt: skip
