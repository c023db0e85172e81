"""The report's tables, built from stored results only.

* Appendix A: clean test metrics per model (the first seed's Appendix A), with 95 %
  intervals: Wilson for the proportions, Hanley–McNeil for ROC-AUC.
* Appendix B: accuracy under each attack per model, one table per dataset.
* Appendix C: accuracy under each attack against β, per dataset, architecture and loss
  weighting (the base model the VIB heads were trained on as the first column).
* Wasserman's comparison: vanilla (linear head) against attentive accuracy under attack, with
  absolute (percentage points) and relative change.
* Worst case: per model, the strongest single attack at an ensemble's ε (the paper's rows in
  the paper sweep: "as the paper measured") beside the per-image worst case, with the gap in
  percentage points, flagged where it exceeds the worst case's interval.
* Uncertainty: detection AUROC and TPR at the FPR operating point; selective prediction.
* Adaptive: per model and detector score, the detector (thresholded on clean validation
  images) against the non-adaptive attack (PGD) and the adaptive one that also evades it:
  detection AUROC, TPR at the threshold, system robust accuracy (correct or rejected) and the
  selective risk under the adaptive attack, flagged where the non-adaptive attack overstates
  the system's robustness.
* Maps: pointing game and top-cell IoU, clean and adversarial, and the clean-to-adversarial
  shift.

Accuracy under attack is against the true labels (see the attacks' ``label_mode``), its
interval the Wilson interval of ``round(accuracy × n)`` correct out of ``n``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from medhpc.attacks.registry import get_attack
from medhpc.metrics import auc_interval, wilson_interval
from medhpc.models.registry import base_head
from medhpc.report.results import ModelResult, attack_names, recipe_key, recipe_title
from medhpc.report.table import Cell, Table
from medhpc.report.uncertainty import LABELS, MEASURES


def proportion(k: int, n: int) -> Cell:
    """k / n with its Wilson interval (– when n = 0)."""
    if n == 0:
        return Cell(None)
    lo, hi = wilson_interval(k, n)
    return Cell(k / n, lo, hi)


def attack_cell(row: dict[str, Any] | None) -> Cell:
    """Accuracy under attack with its interval."""
    if row is None:
        return Cell(None)
    n = int(row["n"])
    return proportion(round(row["accuracy"] * n), n)


def auc_cell(auc: float | None, n_pos: int, n_neg: int) -> Cell:
    if auc is None:
        return Cell(None)
    ci = auc_interval(auc, n_pos, n_neg)
    return Cell(auc, *(ci or (None, None)))


def appendix_a(results: list[ModelResult]) -> Table:
    t = Table("appendix-a", "Appendix A: clean test metrics per model",
              ["dataset", "model", "n", "accuracy", "precision", "recall", "specificity", "F1",
               "balanced accuracy", "ROC-AUC"],
              note="95 % intervals: Wilson for proportions, Hanley–McNeil for ROC-AUC. "
                   "Positive class: referable retinopathy / pneumonia.")  # fmt: skip
    for m in results:
        s = m.metrics["test"]
        n = int(s["n"])
        if "tp" in s:
            tp, fp, fn, tn = (int(s[k]) for k in ("tp", "fp", "fn", "tn"))
            cells = [proportion(tp + tn, n), proportion(tp, tp + fp), proportion(tp, tp + fn),
                     proportion(tn, tn + fp), Cell(s["f1"]), Cell(s["balanced_accuracy"]),
                     auc_cell(s.get("roc_auc"), tp + fn, tn + fp)]  # fmt: skip
        else:  # more than two classes: macro averages without intervals
            cells = [proportion(round(s["accuracy"] * n), n), Cell(s.get("precision")), Cell(s.get("recall")),
                     Cell(None), Cell(s.get("f1")), Cell(s.get("balanced_accuracy")),
                     Cell(s.get("roc_auc"))]  # fmt: skip
        t.add([m.dataset, m.label, n, *cells])
    return t


def _attacks_by_model(t: Table, models: list[ModelResult]) -> Table:
    """Fill ``t`` with a row per attack (first-seen order) and a cell per model; a cell whose
    attack a model's gradient-masking warning names is flagged with it."""
    for i, name in enumerate(attack_names(models)):
        t.add([name, *(attack_cell(m.attack(name)) for m in models)])
        for j, m in enumerate(models, start=1):
            for w in m.evaluation.get("warnings", []):
                if name in w.get("attacks", []):
                    t.flag(i, j, f"{w['kind']}: {w['message']}")
    return t


def appendix_b(results: list[ModelResult]) -> list[Table]:
    """Per dataset: attacks (rows) × models (columns)."""
    tables = []
    for dataset in dict.fromkeys(m.dataset for m in results):
        models = [m for m in results if m.dataset == dataset]
        t = Table(f"appendix-b-{dataset}", f"Appendix B: accuracy under attack, {dataset}",
                  ["attack", *(m.label for m in models)],
                  note=f"Accuracy against the true labels on the first {models[0].evaluation['n']} test images, "
                       "95 % Wilson intervals.")  # fmt: skip
        tables.append(_attacks_by_model(t, models))
    return tables


def _groups(results: list[ModelResult]) -> dict[tuple[str, str, str], list[ModelResult]]:
    groups: dict[tuple[str, str, str], list[ModelResult]] = defaultdict(list)
    for m in results:
        groups[m.group].append(m)
    return groups


def appendix_c(results: list[ModelResult]) -> list[Table]:
    """Per dataset, architecture and weighting with swept heads (VIB): attacks × the axis (β)."""
    tables = []
    for (dataset, arch, weighting), models in _groups(results).items():
        swept = sorted((m for m in models if m.spec.axis is not None), key=lambda m: m.beta or 0.0)
        if not swept:
            continue
        axis, title = swept[0].spec.axis, swept[0].spec.title
        assert axis is not None
        base = next((m for m in models if m.spec.base), None)
        cols = ([base] if base else []) + swept
        names = [f"base ({base.head})"] if base else []
        names += [f"{axis.symbol}={m.beta:g}" for m in swept]
        suffix = recipe_title(weighting)
        key = f"appendix-c-{dataset}-{arch}" + recipe_key(weighting)
        t = Table(key, f"Appendix C: accuracy under attack against {axis.symbol}, {dataset}, {arch}{suffix}",
                  ["attack", *names],
                  note=f"{title} heads trained on the base model's frozen backbone; "
                       "95 % Wilson intervals.")  # fmt: skip
        tables.append(_attacks_by_model(t, cols))
    return tables


def _extra_models(results: list[ModelResult], paired: set[str]) -> list[tuple[str, str | None]]:
    """The Wasserman table's extra columns: every (architecture, defence) of a base-head model
    outside the vanilla/attentive pairs (ViT-B/16, a PGD-AT ResNet50), in first-seen order."""
    keys = [(m.arch, m.defence) for m in results if m.spec.base and m.run not in paired]
    return list(dict.fromkeys(keys))


def _extra_title(arch: str, defence: str | None) -> str:
    return f"{arch} {defence}" if defence else f"{arch} {base_head().name}"


def wasserman(results: list[ModelResult]) -> Table | None:
    """Vanilla vs attentive accuracy under attack, per group that has both; beside them, per
    dataset and loss weighting, the other base-head models of the study (another architecture,
    an adversarially trained one) under the same attack."""
    pairs = []
    for (_, _, training), models in _groups(results).items():
        van = next((m for m in models if m.spec.base), None)
        att = next((m for m in models if m.spec.own_map), None)
        if van is not None and att is not None:
            pairs.append((van, att, training))
    paired = {m.run for van, att, _ in pairs for m in (van, att)}
    extras = _extra_models(results, paired) if pairs else []
    t = Table("wasserman", "Vanilla vs attentive (soft attention) accuracy under attack",
              ["dataset", "model", "attack", "vanilla", "attentive", "change", "relative change",
               *(_extra_title(a, d) for a, d in extras)],
              note="change = attentive − vanilla in percentage points; relative change = change / vanilla "
                   "(– when vanilla is 0). The last columns: the study's other base-head models (another "
                   "architecture, an adversarially trained one) on the same data and loss weighting under "
                   "the same attack (– where it was not run). 95 % Wilson intervals.")  # fmt: skip
    for van, att, training in pairs:
        others = {(m.arch, m.defence): m for m in results if m.spec.base and m.run not in paired
                  and m.dataset == van.dataset and m.weighting == van.weighting}  # fmt: skip
        for name in attack_names([van, att]):
            a, b = van.attack(name), att.attack(name)
            if a is None or b is None:
                continue
            change = (b["accuracy"] - a["accuracy"]) * 100
            rel = change / (a["accuracy"] * 100) * 100 if a["accuracy"] > 0 else None
            label = van.arch + ("" if training == "none" else f", {training}")
            extra = [attack_cell(others[k].attack(name) if k in others else None) for k in extras]
            t.add([van.dataset, label, name, attack_cell(a), attack_cell(b), Cell(change, digits=1, suffix=" pp"),
                   Cell(rel, digits=1, suffix=" %"), *extra])  # fmt: skip
    return t if t.rows else None


def is_ensemble(row: dict[str, Any]) -> bool:
    """Whether a result row is a worst case over members (its config lists them)."""
    return row["config"].get("members") is not None


def worst_case_pairs(m: ModelResult) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Per worst-case row of a model: ``(worst case, strongest single row)``, the second the
    lowest accuracy among the model's other ε-bounded rows at the same ε and norm that are not
    ensembles (None where it has none)."""
    out: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    for w in (r for r in m.attacks if is_ensemble(r)):
        at = (w["config"]["eps"], w["config"]["norm"])
        peers = [r for r in m.attacks if not is_ensemble(r) and get_attack(r["config"]["attack"]).bounded
                 and (r["config"].get("eps"), r["config"].get("norm")) == at]  # fmt: skip
        out.append((w, min(peers, key=lambda r: r["accuracy"]) if peers else None))
    return out


def worst_case(results: list[ModelResult]) -> Table | None:
    """"As the paper measured" (the strongest single attack at the ensemble's ε) beside the
    per-image worst case, per model; the gap flagged where it exceeds the interval."""
    t = Table("worst-case", "As the paper measured vs the per-image worst case",
              ["dataset", "model", "ε", "strongest single attack", "its accuracy", "worst case", "gap",
               "broken by"],
              note="Strongest single attack: the lowest accuracy among the model's other attacks at the same ε and "
                   "norm (the paper's rows in the paper sweep). gap = its accuracy − the worst case's, in percentage "
                   "points; flagged where the single attack's accuracy lies above the worst case's 95 % Wilson "
                   "interval. Broken by: images each member broke first (the rest stayed robust).")  # fmt: skip
    for m in results:
        for w, single in worst_case_pairs(m):
            eps = f"{w['config']['eps']:g} ({w['config']['norm']})"
            worst = attack_cell(w)
            gap = None if single is None else (single["accuracy"] - w["accuracy"]) * 100
            breaks = ", ".join(f"{b['member']} {b['images']}" for b in w.get("broken_by", []))
            t.add([m.dataset, m.label, eps, single["name"] if single else "–", attack_cell(single), worst,
                   Cell(gap, digits=1, suffix=" pp"), breaks or "–"])  # fmt: skip
            if single is not None and worst.hi is not None and single["accuracy"] > worst.hi:
                msg = (f"the single attack overstates robustness: {single['accuracy']:.3f} lies above the worst "
                       f"case's interval [{worst.lo:.3f}, {worst.hi:.3f}]")  # fmt: skip
                t.flag(len(t.rows) - 1, 6, msg)
    return t if t.rows else None


def adaptive_pairs(m: ModelResult) -> list[dict[str, Any]]:
    """A model's rows of attacks on an uncertainty detector that carry their ``adaptive``
    block (:mod:`medhpc.report.adaptive`), in stored order."""
    return [r for r in m.attacks if r.get("adaptive")]


def share_cell(p: dict[str, Any] | None) -> Cell:
    """A stored proportion (``{"k", "n", "value", "interval"}``) with its Wilson interval."""
    if not p or p.get("value") is None:
        return Cell(None)
    lo, hi = p["interval"] or (None, None)
    return Cell(p["value"], lo, hi)


def auroc_cell(a: dict[str, Any] | None) -> Cell:
    """A stored AUROC (``{"value", "interval", ...}``) with its Hanley–McNeil interval."""
    if not a or a.get("value") is None:
        return Cell(None)
    lo, hi = a["interval"] or (None, None)
    return Cell(a["value"], lo, hi)


def _digits(v: float) -> int:
    """Digits after the point that show a threshold's first three significant ones."""
    return 3 if v == 0 or abs(v) >= 0.1 else min(8, 2 - math.floor(math.log10(abs(v))))


def adaptive(results: list[ModelResult], coverages: tuple[float, ...]) -> Table | None:
    """Per model and attack on a detector: the detector against the non-adaptive attack and
    the adaptive one; – where the model has no non-adaptive counterpart."""
    cols = ["dataset", "model", "score", "attack", "threshold τ", "val FPR", "clean accuracy", "coverage",
            "AUROC non-adaptive", "AUROC adaptive", "TPR@τ non-adaptive", "TPR@τ adaptive",
            "system robust accuracy non-adaptive", "system robust accuracy adaptive",
            *(f"selective risk@{c:.0%} adaptive" for c in coverages)]  # fmt: skip
    t = Table("adaptive", "Uncertainty detection against a non-adaptive and an adaptive attacker", cols,
              note="The detector rejects (abstains on) an image whose score is above τ, fitted on clean validation "
                   "images (val FPR: the share it rejects there). Clean accuracy and coverage (share not "
                   "rejected): clean test images. Non-adaptive: the attack that ignores the detector (PGD at the "
                   "same settings); adaptive: the attack that also pushes the score under the threshold. AUROC: "
                   "clean test images against the adversarial images the attack succeeded on; TPR@τ: the share of "
                   "those rejected at τ. System robust accuracy: the share of test images classified correctly or "
                   "rejected under attack. Selective risk@c: error rate among the fraction c of adversarial images "
                   "with the lowest score. 95 % intervals: Wilson for proportions, Hanley–McNeil for AUROC. "
                   "– : no non-adaptive counterpart stored for that model. Flagged: the non-adaptive attack's "
                   "system robust accuracy lies above the adaptive one's interval.")  # fmt: skip
    system = cols.index("system robust accuracy adaptive")
    for m in results:
        for row in adaptive_pairs(m):
            b = row["adaptive"]
            plain, adapt = b.get("non_adaptive") or {}, b["adaptive"]
            val, clean = b["val"], b["clean"]
            tau = float(val["threshold"])
            risks = [share_cell(adapt["selective_risk"].get(f"{c:g}")) for c in coverages]
            t.add([m.dataset, m.label, LABELS.get(b["score"], b["score"]), row["name"], Cell(tau, digits=_digits(tau)),
                   share_cell(val["fpr"]), share_cell(clean["accuracy"]), share_cell(clean["coverage"]),
                   auroc_cell(plain.get("detection_auroc")), auroc_cell(adapt["detection_auroc"]),
                   share_cell(plain.get("tpr_at_threshold")), share_cell(adapt["tpr_at_threshold"]),
                   share_cell(plain.get("system_accuracy")), share_cell(adapt["system_accuracy"]), *risks])  # fmt: skip
            before, after = share_cell(plain.get("system_accuracy")), share_cell(adapt["system_accuracy"])
            if before.value is not None and after.hi is not None and before.value > after.hi:
                t.flag(len(t.rows) - 1, system,
                       f"the non-adaptive attack overstates the system's robustness: {before.value:.3f} under "
                       f"{plain['name']} lies above the adaptive attack's interval "
                       f"[{after.lo:.3f}, {after.hi:.3f}]")  # fmt: skip
    return t if t.rows else None


def detection(results: list[ModelResult], fpr: float) -> Table:
    t = Table("detection", "Detecting adversarial images by uncertainty",
              ["dataset", "model", "attack", "measure", "AUROC (all)", "AUROC (successful)",
               f"TPR@{fpr:.0%} FPR (all)", f"TPR@{fpr:.0%} FPR (successful)", "successful"],
              note="Clean images are negatives, adversarial ones positives, higher uncertainty = more suspect. "
                   "'successful' keeps only the images the attack succeeded on (their clean and adversarial "
                   "versions). 95 % Hanley–McNeil intervals. "
                   "Deterministic models have predictive entropy only.")  # fmt: skip
    for m in results:
        for row in m.attacks:
            u = row.get("uncertainty", {})
            for measure in MEASURES:
                d = u.get("detection", {}).get(measure)
                if d is None:
                    continue
                a, s = d["all"], d["successful"]
                t.add([m.dataset, m.label, row["name"], LABELS[measure],
                       auc_cell(a["auroc"], a["n_adversarial"], a["n_clean"]),
                       auc_cell(s["auroc"], s["n_adversarial"], s["n_clean"]),
                       Cell(a["tpr_at_fpr"]), Cell(s["tpr_at_fpr"]), u["n_successful"]])  # fmt: skip
    return t


SELECTIVE_MEASURES = ("predictive_entropy", "mutual_information")


def selective(results: list[ModelResult], coverages: tuple[float, ...]) -> Table:
    sets = ("clean", "adversarial", "mixed")
    cols = [f"{s} acc@{c:.0%}" for s in sets for c in coverages]
    cols += [f"{s} AURC" for s in sets]
    t = Table("selective", "Selective prediction: abstaining on the most uncertain images",
              ["dataset", "model", "attack", "ranked by", *cols],
              note="acc@c: accuracy on the fraction c of images with the lowest uncertainty; AURC: area under "
                   "the risk–coverage curve (lower is better). "
                   "'mixed' pools the clean and adversarial images.")  # fmt: skip
    for m in results:
        for row in m.attacks:
            sel = row.get("uncertainty", {}).get("selective", {})
            for measure in SELECTIVE_MEASURES:
                if measure not in sel:
                    continue
                r = sel[measure]
                cells: list[Any] = [Cell(r[s]["at_coverage"].get(f"{c:g}")) for s in sets for c in coverages]
                cells += [Cell(r[s]["aurc"]) for s in sets]
                t.add([m.dataset, m.label, row["name"], LABELS[measure], *cells])
    return t


def maps(results: list[ModelResult]) -> Table | None:
    t = Table("maps", "Grad-CAM and attention maps against lesion masks, clean and under attack",
              ["dataset", "model", "map", "attack", "pointing (clean)", "pointing (adv)", "top-cell IoU (clean)",
               "top-cell IoU (adv)", "clean–adv correlation", "clean–adv |Δ|", "lesion images"],
              note="Pointing game: the map's maximum lies on a lesion (95 % Wilson interval over the images with "
                   "a lesion; a flat map, no evidence for the target, counts as a miss). "
                   "Top-cell IoU: the k highest cells of a grid against the k cells holding lesion. "
                   "Shift: per-image Pearson correlation and mean absolute difference of the scaled clean and "
                   "adversarial maps. VIB models: Grad-CAM of the μ path.")  # fmt: skip
    for m in results:
        mp = m.evaluation.get("maps")
        if not mp:
            continue
        for kind in mp["kinds"]:
            clean = mp["clean"][kind]
            n_les = int(clean["n_lesion"])
            for row in m.attacks:
                r = (row.get("maps") or {}).get(kind)
                if r is None:
                    continue
                adv = r["adversarial"]

                def pg(v: float | None, n_les: int = n_les) -> Cell:
                    return Cell(None) if v is None else proportion(round(v * n_les), n_les)

                t.add([m.dataset, m.label, "Grad-CAM" if kind == "gradcam" else "attention", row["name"],
                       pg(clean["pointing_game"]), pg(adv["pointing_game"]), Cell(clean["top_cell_iou"]),
                       Cell(adv["top_cell_iou"]), Cell(r["shift"]["correlation"]), Cell(r["shift"]["abs_diff"]),
                       n_les])  # fmt: skip
    return t if t.rows else None


def all_tables(results: list[ModelResult], fpr: float, coverages: tuple[float, ...]) -> list[Table]:
    """Every table of the report, in the order of the index page."""
    out = [appendix_a(results), *appendix_b(results), *appendix_c(results)]
    extras = (worst_case(results), wasserman(results), adaptive(results, coverages), detection(results, fpr),
              selective(results, coverages), maps(results))  # fmt: skip
    for extra in extras:
        if extra is not None and extra.rows:
            out.append(extra)
    return out
