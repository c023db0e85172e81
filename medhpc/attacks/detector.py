"""An uncertainty detector: one score thresholded at a false-positive rate fitted on clean
validation images, the detector the report measures and the adaptive attack (:mod:`adaptive`) attacks.

Scores (:data:`SCORES`, higher = more suspect): predictive entropy H[p̄] for every model;
mutual information and the variance of p_s over draws for stochastic heads (a deterministic
model's are 0). An image is **rejected** (abstained on) when its score is above the threshold.

One computation scores an image everywhere: the softmax of the model's prediction and of its S
draws under one pinned noise draw (:func:`deployed_probs`, what the shards store, S the head's
``eval_samples``), turned into a score by :func:`score_values` (numpy, float64, the report's
:func:`medhpc.metrics.uncertainty_measures`). The threshold fitted on the validation images is
therefore applied to test images exactly as it was fitted, and the false-positive rate on the
validation images is the chosen one to within one image (ties aside).

:func:`score_torch` is the attacker's differentiable estimate of the same score from per-draw
logits (float32, log-domain so a probability that underflows to 0 has a finite gradient).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medhpc.attacks.common import derive_seed
from medhpc.metrics import entropy, uncertainty_measures
from medhpc.models.config import ModelConfig
from medhpc.models.noise import fixed_noise, is_stochastic

#: The detector's scores, in report order.
SCORES: tuple[str, ...] = ("predictive_entropy", "mutual_information", "variance")
#: Scores that are identically 0 on a deterministic model (one draw).
STOCHASTIC_ONLY: tuple[str, ...] = ("mutual_information", "variance")
#: Short names for config names and table cells.
SHORT: dict[str, str] = {"predictive_entropy": "entropy", "mutual_information": "mi", "variance": "var"}

#: Draws stored per image for a stochastic model without a VIB config to ask (the paper's 12).
DEFAULT_SAMPLES = 12


def default_samples(model: nn.Module) -> int:
    """S for a stochastic model: the draws its head's prediction averages (its spec's
    ``eval_samples``: the VIB head's setting), else :data:`DEFAULT_SAMPLES`."""
    cfg = getattr(model, "cfg", None)
    samples = cfg.head_spec.eval_samples(cfg) if isinstance(cfg, ModelConfig) else 0
    if samples < 1:
        head_cfg = getattr(getattr(model, "head", None), "cfg", None)
        samples = int(getattr(head_cfg, "eval_samples", 0) or 0)
    return samples if samples >= 1 else DEFAULT_SAMPLES


def deployed_probs(
    model: nn.Module, x: torch.Tensor, seed: int, samples: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax of the model's prediction (B, C) and, when ``samples``, of each draw (S, B, C),
    under one pinned noise draw, so that (with S = eval_samples) the draws are the ones the
    prediction combined. What the shards store and what the detector scores."""
    with torch.no_grad(), fixed_noise(model, seed):
        probs = torch.softmax(model(x).float(), -1)
        per_draw = None
        if samples:
            sample_logits = getattr(model, "sample_logits", None)
            if not callable(sample_logits):
                raise TypeError(f"{type(model).__name__} is stochastic but has no sample_logits(x, samples)")
            per_draw = torch.softmax(sample_logits(x, samples).float(), -1)
    return probs, per_draw


def check_score(score: Any, stochastic: bool | None = None) -> str:
    """``score`` if it is a known score (and, when ``stochastic`` is given, defined for such a
    model); a ValueError naming it otherwise."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if stochastic is False and score in STOCHASTIC_ONLY:
        raise ValueError(f"score {score!r} is 0 for every image of a deterministic model (one draw): "
                         "use 'predictive_entropy', or a stochastic head")  # fmt: skip
    return str(score)


def score_values(score: str, probs: np.ndarray, sample_probs: np.ndarray | None) -> np.ndarray:
    """The score per image (float64) from the prediction's softmax (N, C) and, for a stochastic
    model, the draws' (S, N, C): what the report computes from a shard's fields."""
    if sample_probs is None or np.asarray(sample_probs).shape[0] == 0:
        check_score(score, stochastic=False)
        return entropy(probs)
    check_score(score)
    return uncertainty_measures(sample_probs)[score]


def score_torch(score: str, draw_logits: torch.Tensor) -> torch.Tensor:
    """The attacker's differentiable score per image from per-draw logits (S, B, C)."""
    logp = F.log_softmax(draw_logits.float(), -1)
    p = logp.exp()
    s = draw_logits.shape[0]
    log_mean = torch.logsumexp(logp, 0) - math.log(s)
    predictive = -(log_mean.exp() * log_mean).sum(-1)
    if score == "predictive_entropy":
        return predictive
    if score == "mutual_information":
        expected = -(p * logp).sum(-1).mean(0)
        return predictive - expected
    if score == "variance":
        return p.var(0, unbiased=False).mean(-1)
    raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")


def fit_threshold(scores: np.ndarray, fpr: float, target_quantile: float = 0.5) -> tuple[float, float, int]:
    """``(threshold, target, rejected)`` from clean scores.

    The threshold is the ``k+1``-th highest score, k = ⌊fpr · n⌋, so at most k images (exactly k
    unless scores tie there) score above it and are rejected. The target, the level the
    adaptive attacker pushes scores under, is the ``target_quantile`` quantile of the same
    scores (the median by default), never above the threshold.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("no clean scores to fit a threshold on")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} clean scores are not finite")
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
    if not 0 < target_quantile <= 1:
        raise ValueError(f"target_quantile must be in (0, 1], got {target_quantile!r}")
    k = math.floor(fpr * s.size + 1e-9)
    threshold = float(np.sort(s)[::-1][min(k, s.size - 1)])
    target = min(float(np.quantile(s, target_quantile, method="inverted_cdf")), threshold)
    return threshold, target, int((s > threshold).sum())


@dataclass(frozen=True)
class Detector:
    """A fitted detector: reject an image when its ``score`` is above ``threshold``.

    ``fpr`` is the rate asked for, ``rejected`` of the ``n`` clean images of ``split`` it was
    fitted on score above the threshold; ``target`` is the ``target_quantile`` quantile of
    their scores; ``samples`` the draws per score (0: a deterministic model).
    """

    score: str
    fpr: float
    threshold: float
    target: float
    target_quantile: float
    n: int
    rejected: int
    samples: int
    split: str = "val"
    seed: int = 0

    def rejects(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "detector") -> Detector:
        """The detector a shard or file recorded; a ValueError naming the missing or bad key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a mapping, got {type(data).__name__}")
        names = list(cls.__dataclass_fields__)
        missing = [k for k in names if k not in data and k not in ("split", "seed")]
        if missing:
            raise ValueError(f"{source}: missing {', '.join(missing)}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}")
        det = cls(**{k: data[k] for k in names if k in data})
        check_score(det.score)
        for key in ("threshold", "target"):
            if not isinstance(getattr(det, key), (int, float)) or math.isnan(getattr(det, key)):
                raise ValueError(f"{source}.{key}: must be a number, got {getattr(det, key)!r}")
        return det


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    score: str,
    fpr: float = 0.05,
    target_quantile: float = 0.5,
    seed: int = 0,
    samples: int | None = None,
    split: str = "val",
) -> Detector:
    """Fit the detector on clean images: ``batches`` of ``(x, y[, ids])`` in split order.

    The batch starting at split index ``i`` is scored under the noise draw ``derive_seed(seed,
    i, 1)``, the one :func:`medhpc.sweep.produce.attack_to_shard` draws clean images under, so
    a shard of the same split and seed holds exactly these scores.
    """
    stochastic = is_stochastic(model)
    check_score(score, stochastic)
    s = (default_samples(model) if samples is None else samples) if stochastic else 0
    values: list[np.ndarray] = []
    n = 0
    for batch in batches:
        x = batch[0]
        probs, draws = deployed_probs(model, x, derive_seed(seed, n, 1), s)
        values.append(score_values(score, probs.cpu().numpy(), None if draws is None else draws.cpu().numpy()))
        n += x.shape[0]
    if n == 0:
        raise ValueError(f"no {split} images to calibrate the detector on")
    scores = np.concatenate(values)
    threshold, target, rejected = fit_threshold(scores, fpr, target_quantile)
    return Detector(score, float(fpr), threshold, target, float(target_quantile), n, rejected, s, split, seed)


__all__ = [
    "DEFAULT_SAMPLES",
    "SCORES",
    "STOCHASTIC_ONLY",
    "Detector",
    "calibrate",
    "check_score",
    "default_samples",
    "deployed_probs",
    "fit_threshold",
    "score_torch",
    "score_values",
]
