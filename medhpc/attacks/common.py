"""What every attack shares: the result record, argument checks and the preamble (:func:`begin`),
labels, losses, projection, random starts and the EOT gradient.

The rules all attacks follow, so that a sweep can run them on a GPU at full speed:

* everything is batched; an image's perturbation is computed from its own loss only (losses
  are summed over the batch, never averaged, so an image's gradient does not depend on the
  batch size);
* no host synchronisation inside an iteration loop: no ``.item()``, no ``bool(tensor)``, no
  data-dependent indexing; per-image decisions are ``torch.where`` selections;
* every random draw comes from an explicit seed or ``torch.Generator``; a stochastic model's
  noise is pinned per step with :func:`medhpc.models.fixed_noise` under seeds derived from the
  attack's seed, so an attack is reproducible without touching torch's global RNG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from medhpc.attacks.spec import AttackSpec
from medhpc.models.noise import fixed_noise, is_stochastic

log = logging.getLogger(__name__)

Norm = Literal["linf", "l2"]
LabelMode = Literal["true", "pred"]
Clip = tuple[float, float]

NORMS: tuple[str, ...] = ("linf", "l2")
LABEL_MODES: tuple[str, ...] = ("true", "pred")
SEED_LIMIT = 2**62
_TINY = 1e-12  # CleverHans' floor under a squared norm before dividing by it


@dataclass
class AttackResult:
    """The outcome of one attack on a batch.

    Attributes
    ----------
    x_adv : (B, ...) tensor
        Adversarial images, inside the clip range (and the ε-ball for bounded attacks). Images
        the attack failed on are still returned (the last / highest-loss iterate; for CW the
        clean image), with ``success`` False.
    labels : (B,) int64 tensor
        The labels the attack used: the true labels, the model's own predictions on the clean
        images (label mode ``"pred"``), or the target classes of a targeted attack.
    success : (B,) bool tensor
        Untargeted: the model's prediction on ``x_adv`` differs from ``labels``; targeted: it
        equals the target.
    pred : (B,) int64 tensor
        The model's prediction on ``x_adv`` (what "accuracy under attack" compares with the
        true labels).
    l2, linf : (B,) tensors
        Norms of the perturbation ``x_adv - x`` per image.
    targeted : bool
        Whether ``labels`` are targets.
    const : (B,) tensor or None
        CW-L2 only: the trade-off constant c of each image's best example (NaN where the
        attack failed), the per-image outcome of the binary search.
    queries : (B,) int64 tensor or None
        Score-based attacks (Square, SPSA): model queries spent on each image, for comparisons
        at an equal query budget.
    min_norm : (B,) tensor or None
        Minimum-norm attacks (FAB) and the worst case: the smallest perturbation norm (in the
        attack's norm) of a successful example found for each image, inf where none was;
        ``x_adv`` itself stays inside the ε-ball.
    broken_by : (B,) int64 tensor or None
        The worst-case ensemble: the index of the member that broke each image, -1 where none did.
    """

    x_adv: torch.Tensor
    labels: torch.Tensor
    success: torch.Tensor
    pred: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    targeted: bool = False
    const: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    min_norm: torch.Tensor | None = None
    broken_by: torch.Tensor | None = None

    def cpu(self) -> AttackResult:
        """A copy with every tensor on the CPU (one transfer per field, after the attack)."""
        moved: dict[str, Any] = {
            f.name: v.cpu() if isinstance(v := getattr(self, f.name), torch.Tensor) else v
            for f in dataclasses.fields(self)
        }
        return AttackResult(**moved)

    def summary(self) -> dict[str, Any]:
        """Plain numbers for logs and JSON: success rate and mean perturbation norms."""
        n = int(self.success.numel())
        ok = self.success
        n_ok = int(ok.sum())
        return {
            "n": n,
            "success_rate": n_ok / n if n else float("nan"),
            "mean_l2": float(self.l2.double().mean()) if n else float("nan"),
            "mean_linf": float(self.linf.double().mean()) if n else float("nan"),
            "mean_l2_successful": float(self.l2[ok].double().mean()) if n_ok else float("nan"),
        }


# ---------------------------------------------------------------------------------------------
# Argument checks: they run before any loop and never read tensor values (no synchronisation).


def check_norm(norm: Any) -> Norm:
    """Accept ``"linf"``/``"l2"`` (also ``"inf"``, ``float("inf")``, ``2`` as CleverHans spells them)."""
    if isinstance(norm, str) and norm.lower() in ("linf", "inf"):
        return "linf"
    if isinstance(norm, str) and norm.lower() == "l2":
        return "l2"
    if not isinstance(norm, (str, bool)) and isinstance(norm, (int, float)):
        if math.isinf(norm) and norm > 0:
            return "linf"
        if norm == 2:
            return "l2"
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


def check_clip(clip: Clip | None) -> Clip:
    """The valid pixel range; ``None`` means no clipping (the original scripts' behaviour)."""
    if clip is None:
        return (-math.inf, math.inf)
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise ValueError(f"clip must be a (min, max) pair or None, got {clip!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo >= hi:
        raise ValueError(f"clip must be a (min, max) pair with min < max, got {clip!r}")
    return lo, hi


def check_finite_clip(clip: Clip | None, attack: str) -> Clip:
    """The clip range of an attack that needs a bounded box (CW's tanh change of variables)."""
    lo, hi = check_clip(clip)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"clip must be a finite (min, max) range for {attack}, got {clip!r}")
    return lo, hi


def check_number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    """A real number >= minimum (> minimum when ``strict``), or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return value


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """An int >= minimum, or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return seed


def check_batch(x: torch.Tensor, y: torch.Tensor | None) -> None:
    """Shapes and types of the images and labels (no values read)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a non-empty batch (B, ...), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be a (B,) = ({x.shape[0]},) tensor of class indices, got {shape}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class indices, got {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x on {x.device}")


def check_label_mode(label_mode: Any, y: torch.Tensor | None, targeted: bool) -> LabelMode:
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be 'true' or 'pred', got {label_mode!r}")
    if targeted and (y is None or label_mode != "true"):
        raise ValueError("targeted attacks need the target classes as y (and label_mode 'true')")
    return label_mode


def warn_training_mode(model: nn.Module, attack: str) -> None:
    if model.training:
        log.warning(
            "%s: the model is in training mode (batch statistics, dropout): an image's result "
            "then depends on the batch; call model.eval() first",
            attack,
        )


# ---------------------------------------------------------------------------------------------
# Randomness


def derive_seed(seed: int, *parts: int) -> int:
    """A seed for one use (a step, an EOT draw, a restart) derived from the attack's seed.

    Pure Python on the host, so no device work; distinct ``parts`` give unrelated seeds.
    """
    blob = ":".join(str(int(p)) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") % SEED_LIMIT


def resolve_rng(
    device: torch.device, seed: int, generator: torch.Generator | None
) -> tuple[torch.Generator, int]:
    """The attack's device generator and integer base seed.

    With an explicit ``generator`` the base seed is drawn from it once, before any loop (the
    fused SPSA kernels and ``fixed_noise`` take integer seeds). Otherwise a generator on the
    images' device is seeded with ``seed``.
    """
    if generator is not None:
        if torch.device(generator.device).type != device.type:
            raise ValueError(f"generator is on {generator.device} but the images on {device}")
        base = torch.randint(0, SEED_LIMIT, (1,), generator=generator, device=generator.device)
        return generator, int(base.item())  # one read, outside every loop
    seed = check_seed(seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen, seed


def random_start(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator) -> torch.Tensor:
    """A random perturbation in the ε-ball: uniform in the cube for L∞ (as CleverHans and
    Madry et al.), uniform in the ball for L2 (CleverHans draws from the cube and rescales
    into the ball, which is not uniform)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    d = g[0].numel()
    r = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return g / _l2(g).clamp_min(_TINY).view(_bshape(x)) * (eps * r).view(_bshape(x))


# ---------------------------------------------------------------------------------------------
# Norms, steepest-ascent directions, projections


def _bshape(x: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.dim() - 1)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def perturbation_norms(x_adv: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image L2 and L∞ norms of ``x_adv - x``, computed in float64 for exact comparisons."""
    d = (x_adv.double() - x.double()).flatten(1)
    return d.norm(dim=1), d.abs().amax(dim=1)


def ascent_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The unit-norm step that increases a linear loss most: ``sign(g)`` (L∞) or
    ``g / ||g||`` (L2, with CleverHans' 1e-12 floor under ``||g||²`` so a zero gradient gives
    a zero step)."""
    if norm == "linf":
        return torch.sign(grad)
    square = grad.square().flatten(1).sum(1).clamp_min(_TINY)
    return grad / square.sqrt().view(_bshape(grad))


def project(delta: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """Project perturbations onto the ε-ball (CleverHans' ``clip_eta``)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.square().flatten(1).sum(1).clamp_min(_TINY).sqrt()
    factor = torch.clamp(eps / n, max=1.0)
    return delta * factor.view(_bshape(delta))


def clamp_box(x: torch.Tensor, clip: Clip) -> torch.Tensor:
    lo, hi = clip
    if math.isinf(lo) and math.isinf(hi):
        return x
    return x.clamp(lo, hi)


def project_to_feasible(
    x: torch.Tensor, x_adv: torch.Tensor, norm: Norm, eps: float, clip: Clip
) -> torch.Tensor:
    """``clip(x + project(x_adv - x))``: back into the ε-ball, then into the pixel range.

    For L∞ the result is in both sets; for L2 clipping only shortens the perturbation, so it
    stays in the ball.
    """
    return clamp_box(x + project(x_adv - x, norm, eps), clip)


# ---------------------------------------------------------------------------------------------
# Losses. Per image, shape (B,); "ascend" losses are what a gradient attack maximises.


def ce_ascent(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Cross-entropy to raise (untargeted) or its negative (targeted: approach the target)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    return -ce if targeted else ce


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logit[label] - max_{j != label} logit[j]`` over the last dimension; ``labels``
    broadcasts against ``logits.shape[:-1]``. Positive iff the label wins."""
    labels = labels.expand(logits.shape[:-1])
    own = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    # A comparison, not F.one_hot: one_hot validates the labels' range, a host read on CUDA.
    mask = torch.arange(logits.shape[-1], device=logits.device) == labels.unsqueeze(-1)
    other = logits.masked_fill(mask, -math.inf).amax(-1)
    return own - other


def margin_descent(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """CleverHans' SPSA loss, to minimise: the label's margin (untargeted) or the best other
    class's lead over the target (targeted). Negative means the attack succeeds."""
    m = margin(logits, labels)
    return -m if targeted else m


def decide(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, success)`` from logits: argmax and whether it achieves the attack's goal."""
    pred = logits.argmax(-1)
    return pred, (pred == labels) if targeted else (pred != labels)


# ---------------------------------------------------------------------------------------------
# Model calls


def model_logits(model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Logits without gradients; a stochastic model's noise pinned by ``seed``."""
    with torch.no_grad(), fixed_noise(model, seed):
        return model(x)


def resolve_labels(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    label_mode: LabelMode,
    seed: int,
) -> torch.Tensor:
    """The labels to attack: ``y`` in label mode "true", else the model's clean predictions
    (the original scripts' y = None, which avoids label leaking)."""
    if y is not None and label_mode == "true":
        return y.to(torch.long)
    return model_logits(model, x, derive_seed(seed, 0xC1EA)).argmax(-1)


def eot_gradient(
    model: nn.Module,
    x: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    eot: int,
    seed: int,
    step: int,
    wrt: torch.Tensor | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    stochastic: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of the summed per-image loss, averaged over ``eot`` model draws
    (Expectation over Transformation, Athalye et al. 2018).

    Parameters
    ----------
    model : the classifier; a stochastic one draws noise ``derive_seed(seed, step, m)`` for
        draw ``m``, so each step sees fresh but reproducible draws.
    x : the point to differentiate at (``wrt`` if given is the variable, ``transform(wrt)``
        the model input: CW differentiates in tanh space).
    loss_fn : logits (B, C) -> per-image loss (B,). Summed, not averaged, so each image's
        gradient is its own loss's.
    eot : draws per step; a deterministic model takes one whatever is asked (more would
        repeat the same gradient).
    stochastic : whether the model draws noise, if the caller knows (saves walking the
        model's modules every step); None finds out.

    Returns
    -------
    (grad, logits, loss): mean gradient w.r.t. ``wrt`` (or ``x``), and the logits and
    per-image loss averaged over the draws, all detached.
    """
    if stochastic is None:
        stochastic = is_stochastic(model)
    draws = eot if stochastic else 1
    var = (x if wrt is None else wrt).detach().requires_grad_(True)
    sums: list[torch.Tensor] = []
    for m in range(draws):
        noise = fixed_noise(model, derive_seed(seed, step, m)) if stochastic else contextlib.nullcontext()
        with torch.enable_grad(), noise:
            logits = model(var if transform is None else transform(var))
            loss = loss_fn(logits)
            (g,) = torch.autograd.grad(loss.sum(), var)
        parts = [g, logits.detach(), loss.detach()]
        sums = parts if not sums else [a + b for a, b in zip(sums, parts, strict=True)]
    grad, logits, loss = sums if draws == 1 else [t / draws for t in sums]
    return grad, logits, loss


def finish(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    targeted: bool,
    seed: int,
    const: torch.Tensor | None = None,
    *,
    queries: torch.Tensor | None = None,
    min_norm: torch.Tensor | None = None,
    broken_by: torch.Tensor | None = None,
) -> AttackResult:
    """Evaluate the final images once and package the result (one extra forward)."""
    x_adv = x_adv.detach()
    pred, success = decide(model_logits(model, x_adv, derive_seed(seed, 0xF1A1)), labels, targeted)
    l2, linf = perturbation_norms(x_adv, x)
    return AttackResult(
        x_adv, labels, success, pred, l2.to(x.dtype), linf.to(x.dtype), targeted, const,
        queries=queries, min_norm=min_norm, broken_by=broken_by,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The preamble every attack runs after checking its own parameters


@dataclass
class Setup:
    """What an attack starts from: its checked arguments, detached images and the labels to attack.

    ``x`` is detached (and clamped into the box for attacks that need a finite one), ``norm``
    and ``eps`` are None for attacks without them, ``seed`` is the base seed every draw derives
    from, ``stochastic`` whether the model draws noise (then EOT applies).
    """

    x: torch.Tensor
    labels: torch.Tensor
    box: Clip
    norm: Norm | None
    eps: float | None
    eot: int
    generator: torch.Generator
    seed: int
    stochastic: bool


def begin(
    spec: AttackSpec,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    clip: Clip | None,
    label_mode: Any,
    targeted: bool,
    seed: int,
    generator: torch.Generator | None,
    eps: Any = None,
    norm: Any = None,
    eot: Any = None,
) -> Setup:
    """Check the arguments every attack shares, then set it up: the RNG, the images, the labels.

    The checks read no tensor values (no host synchronisation); the one model call resolves
    the labels (the model's clean predictions in label mode ``pred``). ``eps`` is checked
    when ``spec.bounded``, ``norm`` and ``eot`` when the attack takes them (not None).
    """
    check_batch(x, y)
    eps_ = check_number("eps", eps) if spec.bounded else None
    norm_ = check_norm(norm) if norm is not None else None
    box = check_finite_clip(clip, spec.name) if spec.finite_clip else check_clip(clip)
    mode = check_label_mode(label_mode, y, targeted)
    eot_ = check_count("eot", eot) if eot is not None else 1
    warn_training_mode(model, spec.name)
    gen, base = resolve_rng(x.device, seed, generator)
    x = x.detach()
    if spec.finite_clip:
        x = x.clamp(*box)
    labels = resolve_labels(model, x, y, mode, base)
    return Setup(x, labels, box, norm_, eps_, eot_, gen, base, is_stochastic(model))
