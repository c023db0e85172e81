"""Robustness evaluation: accuracy under each attack configuration, and gradient-masking flags.

Runs every :class:`AttackConfig` on every batch, accumulates on the device (one read at the
end), and returns plain, JSON-serialisable dicts: per attack the accuracy under attack (model
prediction on the adversarial image vs the *true* label), the attack's success rate (w.r.t.
the labels it attacked), and the mean L2 / L∞ of the perturbations; then warning flags for the
signs of an unfair evaluation that Athalye et al. (2018) list (see :func:`masking_warnings`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from medhpc.attacks.common import derive_seed, model_logits
from medhpc.attacks.config import AttackConfig, run_attack
from medhpc.attacks.detector import Detector, deployed_probs, score_values
from medhpc.attacks.registry import get_attack
from medhpc.attacks.spec import RUNTIME, AttackSpec
from medhpc.config import config_hash, to_dict
from medhpc.metrics import wilson_interval

log = logging.getLogger(__name__)

_FIELDS = ("n", "correct", "success", "l2", "linf", "l2_success", "linf_success")


def evaluate_robustness(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attacks: Sequence[AttackConfig],
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    tolerance: float = 0.01,
    cw_max_accuracy: float = 0.05,
    cw_min_success: float = 0.5,
    detectors: Mapping[int, Detector] | None = None,
) -> dict[str, Any]:
    """Accuracy under attack for each configuration, with gradient-masking warnings.

    Parameters
    ----------
    model : the classifier, evaluated as it is (call ``eval()`` first).
    batches : (x, y) pairs: images in the clip range and their true labels.
    attacks : the configurations, e.g. :func:`medhpc.attacks.paper_attacks`.
    seed : names every random draw; batch ``i`` runs attack ``j`` under a seed derived from
        (seed, i, j), so results are reproducible and batches draw independently.
    device : where to run (default: the model's).
    progress : a tqdm bar over batches.
    tolerance, cw_max_accuracy, cw_min_success : thresholds of :func:`masking_warnings`.
    detectors : for each attack on an uncertainty detector (by its index in ``attacks``), the
        fitted detector (:func:`medhpc.attacks.detector.calibrate`). Its row also gets
        ``detector``, ``rejected`` (adversarial images the detector rejects) and
        ``system_accuracy`` (images classified correctly or rejected), with intervals.

    Returns
    -------
    ``{"n": images, "attacks": [row, ...], "warnings": [flag, ...]}``; each row holds the
    config (``config`` and ``hash``), ``name``, ``accuracy``, ``success_rate``, ``mean_l2``,
    ``mean_linf`` (over all images), ``mean_l2_successful``, ``mean_linf_successful``
    (over the images the attack succeeded on; None if none). Targeted configs attack the class
    after the true one, ``(y + 1) mod C``.
    """
    if not attacks:
        raise ValueError("attacks must list at least one AttackConfig")
    for i, cfg in enumerate(attacks):
        if not isinstance(cfg, AttackConfig):
            raise ValueError(f"attacks[{i}] must be an AttackConfig, got {type(cfg).__name__}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    totals: list[dict[str, torch.Tensor]] = [
        {k: torch.zeros((), dtype=torch.float64, device=device) for k in _FIELDS} for _ in attacks
    ]
    for b, (x, y) in enumerate(tqdm(batches, desc="robustness", unit="batch", disable=not progress)):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True).long()
        classes: int | None = None
        for j, cfg in enumerate(attacks):
            labels = y
            if cfg.targeted:
                if classes is None:
                    classes = int(model_logits(model, x[:1], seed).shape[-1])
                labels = (y + 1) % classes
            det = (detectors or {}).get(j)
            res = run_attack(model, x, labels, cfg, seed=derive_seed(seed, b, j), detector=det)
            t = totals[j]
            if det is not None:
                probs, draws = deployed_probs(model, res.x_adv, derive_seed(seed, b, j, 2), det.samples)
                scores = score_values(det.score, probs.cpu().numpy(), None if draws is None else draws.cpu().numpy())
                rejects = torch.from_numpy(det.rejects(scores)).to(device)
                n_rej = rejects.double().sum()
                n_sys = ((res.pred == y) | rejects).double().sum()
                t["rejected"] = t["rejected"] + n_rej if "rejected" in t else n_rej
                t["system"] = t["system"] + n_sys if "system" in t else n_sys
            ok = res.success.double()
            t["n"] += res.success.numel()
            t["correct"] += (res.pred == y).double().sum()
            t["success"] += ok.sum()
            t["l2"] += res.l2.double().sum()
            t["linf"] += res.linf.double().sum()
            t["l2_success"] += (res.l2.double() * ok).sum()
            t["linf_success"] += (res.linf.double() * ok).sum()
            if res.broken_by is not None and cfg.members is not None:
                counts = torch.bincount(res.broken_by + 1, minlength=len(cfg.members) + 1).double()
                t["broken_by"] = t["broken_by"] + counts if "broken_by" in t else counts
    rows = []
    for j, (cfg, t) in enumerate(zip(attacks, totals, strict=True)):
        breaks = t.pop("broken_by", None)
        n_rejected: torch.Tensor | None = t.pop("rejected") if "rejected" in t else None
        n_system: torch.Tensor | None = t.pop("system") if "system" in t else None
        row = attack_row(cfg, {k: float(v) for k, v in t.items()})
        if n_rejected is not None and n_system is not None:
            rejected, system = float(n_rejected), float(n_system)
            n_img = row["n"]
            det = (detectors or {})[j]
            row["detector"] = det.to_dict()
            row["rejected"] = rejected / n_img
            row["rejected_interval"] = list(wilson_interval(round(rejected), n_img))
            row["system_accuracy"] = system / n_img
            row["system_accuracy_interval"] = list(wilson_interval(round(system), n_img))
        if breaks is not None:
            row["broken_by"] = member_breaks(cfg, [int(c) for c in breaks.tolist()])
        rows.append(row)
    for row in rows:
        log.info(
            "%s: accuracy %.4f, success %.4f, mean L2 %.4g, mean Linf %.4g",
            row["name"], row["accuracy"], row["success_rate"], row["mean_l2"], row["mean_linf"],
        )  # fmt: skip
    warnings = masking_warnings(
        rows, tolerance=tolerance, cw_max_accuracy=cw_max_accuracy, cw_min_success=cw_min_success
    )
    for w in warnings:
        log.warning("gradient-masking sign (%s): %s", w["kind"], w["message"])
    n = int(rows[0]["n"]) if rows else 0
    return {"n": n, "attacks": rows, "warnings": warnings}


def attack_row(cfg: AttackConfig, t: dict[str, float]) -> dict[str, Any]:
    """One table row from an attack's totals over its images: ``n``, ``correct`` (prediction
    equals the true label), ``success``, and the sums of ``l2`` / ``linf`` over all images and
    over the successful ones (``l2_success`` / ``linf_success``)."""
    n = t["n"]
    if n == 0:
        raise ValueError("batches held no images")
    ok = t["success"]
    return {
        "name": cfg.name,
        "hash": config_hash(cfg),
        "config": to_dict(cfg),
        "n": int(n),
        "accuracy": t["correct"] / n,
        "accuracy_interval": list(wilson_interval(round(t["correct"]), int(n))),
        "success_rate": ok / n,
        "mean_l2": t["l2"] / n,
        "mean_linf": t["linf"] / n,
        "mean_l2_successful": t["l2_success"] / ok if ok else None,
        "mean_linf_successful": t["linf_success"] / ok if ok else None,
    }


def member_breaks(cfg: AttackConfig, counts: Sequence[int]) -> list[dict[str, Any]]:
    """An ensemble's images per member that broke them: ``counts[0]`` none did, ``counts[k]``
    member ``k - 1`` (a bincount of ``broken_by + 1``). Each entry: ``member`` (its name, or
    "none"), ``index`` (-1 for none) and ``images``."""
    members = cfg.members or ()
    if len(counts) != len(members) + 1:
        raise ValueError(f"{cfg.name}: {len(counts)} counts for {len(members)} members and 'none'")
    pairs = enumerate(zip(members, counts[1:], strict=True))
    out = [{"member": m.name, "index": k, "images": int(c)} for k, (m, c) in pairs]
    return out + [{"member": "none", "index": -1, "images": int(counts[0])}]


def _spec(row: dict[str, Any]) -> AttackSpec:
    return get_attack(row["config"]["attack"])


def _family(cfg: dict[str, Any]) -> tuple[Any, ...]:
    """Everything but the budget: rows that differ only in ε (and the settings derived from it)."""
    skip = {"eps", *get_attack(cfg["attack"]).derived, *RUNTIME}
    return tuple((k, str(v)) for k, v in sorted(cfg.items()) if k not in skip)


def _margin(a: dict[str, Any], b: dict[str, Any], tolerance: float) -> float:
    """``tolerance`` + two standard errors of an accuracy on the rows' images (see below)."""
    n = min(a.get("n") or 0, b.get("n") or 0)
    if not n:
        return tolerance
    p = (a["accuracy"] + b["accuracy"]) / 2
    return tolerance + 2 * math.sqrt(p * (1 - p) / n)


#: What each kind of :func:`masking_warnings` flag means, in plain words: shown beside the flag
#: (its ``explanation``) so that a reader can tell a real finding from a broken evaluation.
EXPLANATIONS: dict[str, str] = {
    "accuracy_rises_with_eps": (
        "A bigger perturbation budget should never make an attack weaker: every image the smaller "
        "budget allows is also allowed by the bigger one. When accuracy goes up as epsilon grows, the "
        "attack is not finding the worst case, typically because the model's gradients are "
        "uninformative (saturated or flat logits, a model that barely learned, or a one-step attack "
        "overshooting). The accuracies at the larger epsilon overstate robustness: attack with more "
        "steps or random restarts before trusting them."
    ),
    "one_step_beats_iterative": (
        "An iterative attack that can reach the edge of the same epsilon-ball includes the one-step "
        "attack's move as a possibility, so it should be at least as strong. A one-step attack (FGSM) "
        "doing better means the iterative attack's gradient steps lead it astray: a sign of gradient "
        "masking (a noisy or locally misleading loss surface). Trust neither number until the "
        "iterative attack, given more steps or restarts, is the stronger one."
    ),
    "black_box_beats_white_box": (
        "A black-box attack (SPSA) only queries the model's outputs, while a white-box attack uses its "
        "exact gradients, so at the same epsilon the white-box attack should be at least as strong. "
        "When the black-box attack does better, the gradients the white-box attack follows are "
        "obfuscated: shattered, saturated, or randomised (a stochastic head such as VIB draws new "
        "noise in every forward pass, so each gradient is that of one random draw). The white-box "
        "accuracy then overstates robustness; the black-box number is the more honest one, and "
        "averaging gradients over draws (EOT) is the fix to try."
    ),
    "unbounded_attack_fails": (
        "An attack without an epsilon bound (CW-L2) may change the image as much as it needs to, so "
        "given enough iterations it should fool the model on almost every image. When it leaves "
        "accuracy well above zero, either its budget (steps, binary-search steps, learning rate, "
        "initial constant) is too small for this model or the gradients it follows are masked; its "
        "perturbation sizes are then not the minimal ones and its accuracy is no robustness."
    ),
}


def masking_warnings(
    rows: Sequence[dict[str, Any]],
    *,
    tolerance: float = 0.01,
    cw_max_accuracy: float = 0.05,
    cw_min_success: float = 0.5,
) -> list[dict[str, Any]]:
    """Flags for the signs of gradient masking in a robustness table (Athalye et al. 2018).

    * ``accuracy_rises_with_eps``: within one attack family (same attack and settings but ε),
      accuracy at a larger ε exceeds that at a smaller one by more than the margin.
    * ``one_step_beats_iterative``: a one-step white-box attack's (FGSM) accuracy is lower (by
      more than the margin) than an iterative white-box attack's (PGD, APGD) at the same ε and
      norm whose steps can reach the ball's surface (the spec's ``reaches_surface``: for PGD
      ``steps · step_size ≥ ε``; PGD 1 × 0.01 at ε 0.02 is legitimately weaker).
    * ``black_box_beats_white_box``: a black-box attack's (SPSA) accuracy is lower (by more
      than the margin) than the strongest white-box attack's at the same ε and norm.
    * ``unbounded_attack_fails``: an attack with no ε bound (CW-L2) succeeds on fewer than
      ``cw_min_success`` of the images or leaves accuracy above ``cw_max_accuracy``.

    What kind of attack a row is comes from its :class:`~medhpc.attacks.spec.AttackSpec`.

    The margin is ``tolerance`` plus two standard errors of an accuracy measured on the rows'
    ``n`` images, ``2 sqrt(p (1 - p) / n)`` at their mean accuracy p: a difference of a few
    images between two random attacks is sampling noise, not masking (SPSA at 5 × 0.01 moves a
    pixel by 0.05 at most, so the paper's ε 0.1 / 0.5 / 1.0 rows differ only by such noise).
    Rows without ``n`` get ``tolerance`` alone.

    Every comparison uses ``1 - success_rate`` (named accuracy in the messages): the accuracy
    under attack for true labels, the share of predictions kept for ``label_mode: pred``.

    ``rows`` are :func:`evaluate_robustness` rows (``config``, ``name``, ``success_rate``,
    ``n``). Returns a list of ``{"kind", "message", "attacks", "explanation"}`` dicts; the
    ``explanation`` is the kind's plain-words paragraph from :data:`EXPLANATIONS`.
    """
    # An attack's strength is the share of images it failed on, 1 - success rate: the
    # accuracy under attack when it attacks the true labels. With label_mode "pred" the
    # accuracy against the true labels is not a strength (flipping a wrong prediction makes
    # it right: a model near chance keeps ~50 % "accuracy" under a perfect attack).
    # An attack on (classifier + detector) gives up misclassifications to evade the detector:
    # its accuracy is not a classification attack's strength.
    rows = [{**r, "accuracy": 1.0 - r["success_rate"]} for r in rows if not _spec(r).calibrated]
    out: list[dict[str, Any]] = []

    def flag(kind: str, message: str, *names: str) -> None:
        out.append({"kind": kind, "message": message, "attacks": list(names), "explanation": EXPLANATIONS[kind]})

    families: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if _spec(row).bounded:
            families[_family(row["config"])].append(row)
    for members in families.values():
        members = sorted(members, key=lambda r: r["config"]["eps"])
        for small, large in zip(members, members[1:], strict=False):
            if large["config"]["eps"] > small["config"]["eps"] and large["accuracy"] > small["accuracy"] + _margin(
                small, large, tolerance
            ):
                flag(
                    "accuracy_rises_with_eps",
                    f"{large['name']}: accuracy {large['accuracy']:.4f} above {small['accuracy']:.4f} "
                    f"at the smaller eps {small['config']['eps']:g}",
                    small["name"], large["name"],
                )  # fmt: skip

    def at(row: dict[str, Any]) -> tuple[Any, Any]:
        return row["config"]["eps"], row["config"]["norm"]

    def iterative_white(row: dict[str, Any]) -> bool:
        spec = _spec(row)
        return spec.bounded and spec.white_box and spec.iterative

    for one in (r for r in rows if _spec(r).one_step):
        for it in (r for r in rows if iterative_white(r) and at(r) == at(one)):
            if (
                _spec(it).reaches_surface(it["config"])
                and one["accuracy"] + _margin(one, it, tolerance) < it["accuracy"]
            ):
                flag(
                    "one_step_beats_iterative",
                    f"{one['name']} (accuracy {one['accuracy']:.4f}) is stronger than "
                    f"{it['name']} (accuracy {it['accuracy']:.4f})",
                    one["name"], it["name"],
                )  # fmt: skip

    for black in (r for r in rows if _spec(r).bounded and not _spec(r).white_box):
        white = [r for r in rows if _spec(r).bounded and _spec(r).white_box and at(r) == at(black)]
        if not white:
            continue
        best = min(white, key=lambda r: r["accuracy"])
        if black["accuracy"] + _margin(black, best, tolerance) < best["accuracy"]:
            flag(
                "black_box_beats_white_box",
                f"{black['name']} (accuracy {black['accuracy']:.4f}) is stronger than the best "
                f"white-box attack at that eps, {best['name']} (accuracy {best['accuracy']:.4f})",
                black["name"], best["name"],
            )  # fmt: skip

    for cw in (r for r in rows if _spec(r).perturbs and not _spec(r).bounded):
        if cw["success_rate"] < cw_min_success or cw["accuracy"] > cw_max_accuracy:
            flag(
                "unbounded_attack_fails",
                f"{cw['name']} succeeds on {cw['success_rate']:.4f} of the images and leaves accuracy "
                f"{cw['accuracy']:.4f} (an unbounded attack should reach ~0)",
                cw["name"],
            )  # fmt: skip
    return out
