"""The report's figures (PNG, matplotlib's Agg backend, no display needed).

* accuracy against β per attack (per dataset, architecture and weighting with VIB heads);
* accuracy against ε per model (attack families with an ε budget; ε = 0 is clean accuracy);
* risk–coverage curves per model (adversarial and mixed sets, ranked by predictive entropy);
* detection ROC curves per model and uncertainty measure;
* Grad-CAM and attention maps per model: images with their lesion outline, the clean map and
  the map under each attack;
* the worst case beside the strongest single attack, per model;
* uncertainty detection against a non-adaptive and an adaptive attacker: per model and
  detector, system robust accuracy and detection AUROC under each.

Every figure function takes stored results and a path, and returns the path it wrote.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medhpc import atomic
from medhpc.attacks.registry import get_attack
from medhpc.report.results import ModelResult, attack_names
from medhpc.report.table import Cell
from medhpc.report.tables import adaptive_pairs, attack_cell, auroc_cell, share_cell, worst_case_pairs
from medhpc.report.uncertainty import LABELS, MEASURES

DPI = 110


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return path


def _errorbar(ax: Any, x: list[float], rows: Sequence[dict[str, Any] | None], **kw: Any) -> None:
    cells = [attack_cell(r) for r in rows]
    pts = [(xi, c) for xi, c in zip(x, cells, strict=True) if c.value is not None]
    if not pts:
        return
    xs = [p[0] for p in pts]
    ys = np.array([p[1].value for p in pts], dtype=float)
    lo = np.array([p[1].lo for p in pts], dtype=float)
    hi = np.array([p[1].hi for p in pts], dtype=float)
    ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], capsize=3, marker="o", ms=4, **kw)


def accuracy_vs_beta(models: list[ModelResult], title: str, path: Path) -> Path:
    """One line per attack over the VIB heads' β (log axis); the base model dotted."""
    plt = _plt()
    vib = sorted((m for m in models if m.spec.axis is not None), key=lambda m: m.beta or 0.0)
    base = next((m for m in models if m.spec.base), None)
    axis = vib[0].spec.axis
    assert axis is not None
    betas = [m.beta or 0.0 for m in vib]
    positive = [b for b in betas if b > 0]
    floor = min(positive) / 10 if positive else 1e-3
    xs = [b if b > 0 else floor for b in betas]  # beta = 0 drawn at the left edge
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    names = attack_names(vib)
    for i, name in enumerate(names):
        color = f"C{i % 10}"
        shift = 10 ** (0.025 * (i - (len(names) - 1) / 2))  # side by side, so the intervals stay readable
        _errorbar(ax, [x * shift for x in xs], [m.attack(name) for m in vib], color=color, label=name)
        if base is not None and (b := base.attack(name)) is not None:
            ax.axhline(b["accuracy"], color=color, ls=":", lw=1)
    ax.set_xscale("log")
    s = axis.symbol
    ax.set_xlabel(f"{s} ({vib[0].spec.title})" + (f"; {s} = 0 drawn at {floor:g}" if 0.0 in betas else ""))
    ax.set_ylabel("accuracy under attack")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title + ("\n(dotted: base model)" if base is not None else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), title="attack", title_fontsize=7)
    return _save(fig, path)


def _family(cfg: dict[str, Any]) -> str | None:
    """Attacks whose strength is ε: ``fgsm (linf)`` etc.; None for unbounded ones (CW) and none."""
    if not get_attack(cfg["attack"]).bounded:
        return None
    suffix = f" ({cfg['norm']})" if cfg.get("norm") else ""
    extra = f", {cfg['steps']} steps" if cfg.get("steps") else ""
    return f"{cfg['attack']}{suffix}{extra}"


def accuracy_vs_eps(models: list[ModelResult], title: str, path: Path) -> Path:
    """A panel per model; a line per attack family over ε, starting at the clean accuracy."""
    plt = _plt()
    cols = min(4, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.6 * rows), squeeze=False, sharey=True,
                             layout="constrained")  # fmt: skip
    for ax, m in zip(axes.flat, models, strict=False):
        clean = next((r for r in m.attacks if not get_attack(r["config"]["attack"]).perturbs), None)
        fams: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
        for r in m.attacks:
            fam = _family(r["config"])
            if fam is not None:
                fams[fam].append((float(r["config"]["eps"]), r))
        top = max((p[0] for pts in fams.values() for p in pts), default=1.0)
        for i, (fam, pts) in enumerate(fams.items()):
            pts.sort(key=lambda p: p[0])
            shift = 0.012 * top * (i - (len(fams) - 1) / 2)  # side by side, so the intervals stay readable
            xs = ([0.0] if clean else []) + [p[0] + shift for p in pts]
            rs = ([clean] if clean else []) + [p[1] for p in pts]
            _errorbar(ax, xs, rs, color=f"C{i % 10}", label=fam)
        ax.set_title(m.label, fontsize=9)
        ax.set_xlabel("ε")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if fams:
            ax.legend(fontsize=7)
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("accuracy under attack")
    fig.suptitle(title + " (ε = 0: clean)", fontsize=10)
    return _save(fig, path)


def risk_coverage(m: ModelResult, path: Path, measure: str = "predictive_entropy") -> Path:
    """Adversarial and mixed sets per attack, with the clean set in both panels."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True, layout="constrained")
    clean_done = False
    for i, r in enumerate(m.attacks):
        sel = r.get("uncertainty", {}).get("selective", {}).get(measure)
        if sel is None:
            continue
        if not clean_done:
            c = np.array(sel["clean"]["curve"])
            for ax in axes:
                ax.plot(c[:, 0], c[:, 1], color="k", lw=2, label=f"clean (AURC {sel['clean']['aurc']:.3f})")
            clean_done = True
        if r["config"]["attack"] == "none":
            continue
        for ax, key in zip(axes, ("adversarial", "mixed"), strict=True):
            c = np.array(sel[key]["curve"])
            ax.plot(c[:, 0], c[:, 1], color=f"C{i % 10}", label=f"{r['name']} (AURC {sel[key]['aurc']:.3f})")
    for ax, key in zip(axes, ("adversarial images", "clean + adversarial"), strict=True):
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("coverage")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("risk (error rate among kept)")
    fig.suptitle(f"{m.label}: risk–coverage, ranked by {LABELS[measure]}", fontsize=10)
    return _save(fig, path)


def detection_roc(m: ModelResult, path: Path) -> Path:
    """A panel per uncertainty measure; solid: all images, dashed: successful attacks only."""
    plt = _plt()
    present = [k for k in MEASURES if any(k in r.get("uncertainty", {}).get("detection", {}) for r in m.attacks)]
    present = present or ["predictive_entropy"]
    fig, axes = plt.subplots(1, len(present), figsize=(3.9 * len(present), 3.9), squeeze=False, layout="constrained")
    for ax, measure in zip(axes[0], present, strict=True):
        for i, r in enumerate(m.attacks):
            d = r.get("uncertainty", {}).get("detection", {}).get(measure)
            if d is None:
                continue
            color = f"C{i % 10}"
            if "roc" in d["all"]:
                c = np.array(d["all"]["roc"])
                ax.plot(c[:, 0], c[:, 1], color=color, label=f"{r['name']} ({d['all']['auroc']:.2f})")
            if "roc" in d["successful"]:
                c = np.array(d["successful"]["roc"])
                ax.plot(c[:, 0], c[:, 1], color=color, ls="--", lw=1)
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
        ax.set_title(LABELS[measure], fontsize=9)
        ax.set_xlabel("false-positive rate (clean flagged)")
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right", title="AUROC, all images", title_fontsize=6)
    axes[0, 0].set_ylabel("true-positive rate (adversarial flagged)")
    fig.suptitle(f"{m.label}: detection ROC (dashed: successful attacks only)", fontsize=10)
    return _save(fig, path)


def maps_figure(m: ModelResult, arrays: dict[str, np.ndarray], kind: str, classes: list[str], path: Path) -> Path:
    """Rows: images (lesion outlined in green); columns: the image, its clean map, and its map
    under each attack, overlaid, titled with the prediction."""
    from medhpc.report.maps import upsample  # the scaling the scores use (imports torch)

    plt = _plt()
    images, masks = arrays["images"], arrays["masks"]
    attacks = [str(a) for a in arrays["attacks"]]
    maps_ = [arrays[f"{kind}_clean"]] + ([*arrays[f"{kind}_adv"]] if f"{kind}_adv" in arrays else [])
    n, size = images.shape[0], images.shape[1]
    scaled = [upsample(a, size) for a in maps_]
    cols = 1 + len(scaled)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.95 * n + 0.5), squeeze=False)
    name = "Grad-CAM" + (" (μ path)" if m.spec.stochastic else "") if kind == "gradcam" else "attention"
    heads = ["image", f"clean {name}", *attacks]
    preds = [arrays["clean_pred"]] + ([*arrays["adv_pred"]] if "adv_pred" in arrays else [])
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(images[i])
        if masks[i].any():
            ax.contour(masks[i], levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_ylabel(f"label: {classes[int(arrays['labels'][i])]}", fontsize=7)
        for j, s in enumerate(scaled, start=1):
            ax = axes[i, j]
            ax.imshow(images[i])
            ax.imshow(s[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if masks[i].any():
                ax.contour(masks[i], levels=[0.5], colors="lime", linewidths=0.6)
            ax.set_title(f"pred: {classes[int(preds[j - 1][i])]}", fontsize=6, pad=2)
            if not (maps_[j - 1][i] > 0).any():  # Grad-CAM's ReLU left nothing: no evidence for the target
                ax.text(0.5, 0.5, "flat map:\nno evidence\nfor the target", transform=ax.transAxes, ha="center",
                        va="center", fontsize=6, color="white")  # fmt: skip
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for j, h in enumerate(heads):
        axes[0, j].annotate(h, (0.5, 1.22), xycoords="axes fraction", ha="center", fontsize=7, weight="bold")
    fig.suptitle(f"{m.label}: {name} (green: lesion)", fontsize=9, y=1.0)
    fig.tight_layout()
    return _save(fig, path)


def worst_case_gap(models: list[ModelResult], title: str, path: Path) -> Path:
    """Per model and worst-case row: the strongest single attack's accuracy beside the worst
    case's, with their intervals and a line between them (the gap)."""
    plt = _plt()
    pairs = [(m, w, single) for m in models for w, single in worst_case_pairs(m)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(pairs) + 2), 4.2), layout="constrained")
    xs = list(range(len(pairs)))
    for x, (_, w, single) in zip(xs, pairs, strict=True):
        if single is not None:
            ax.plot([x - 0.12, x + 0.12], [single["accuracy"], w["accuracy"]], color="0.6", lw=1)
    _errorbar(ax, [x - 0.12 for x in xs], [s for _, _, s in pairs], color="C0", ls="none",
              label="strongest single attack (as the paper measured)")  # fmt: skip
    _errorbar(ax, [x + 0.12 for x in xs], [w for _, w, _ in pairs], color="C3", ls="none", label="worst case")
    ax.set_xticks(xs, [f"{m.label}\nε {w['config']['eps']:g}" for m, w, _ in pairs], fontsize=7, rotation=30,
                  ha="right")  # fmt: skip
    ax.set_ylabel("accuracy under attack")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _cellbar(ax: Any, x: list[float], cells: Sequence[Cell], **kw: Any) -> None:
    """Points with their interval bars; missing cells left out."""
    pts = [(xi, c) for xi, c in zip(x, cells, strict=True) if c.value is not None]
    if not pts:
        return
    ys = np.array([c.value for _, c in pts], dtype=float)
    lo = np.array([c.value if c.lo is None else c.lo for _, c in pts], dtype=float)
    hi = np.array([c.value if c.hi is None else c.hi for _, c in pts], dtype=float)
    ax.errorbar([p[0] for p in pts], ys, yerr=[ys - lo, hi - ys], capsize=3, marker="o", ms=4, ls="none", **kw)


def adaptive_detection(models: list[ModelResult], title: str, path: Path) -> Path:
    """Per model and attack on a detector: system robust accuracy (left) and detection AUROC
    (right) under the non-adaptive attack beside the adaptive one, with their intervals and a
    line between them; a missing non-adaptive counterpart draws the adaptive point alone."""
    plt = _plt()
    pairs = [(m, r) for m in models for r in adaptive_pairs(m)]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 2.0 * len(pairs) + 3), 4.4), layout="constrained")
    xs = list(range(len(pairs)))
    panels = (("system_accuracy", share_cell, "system robust accuracy\n(correct or rejected under attack)"),
              ("detection_auroc", auroc_cell, "detection AUROC\n(clean vs successful adversarial)"))  # fmt: skip
    for ax, (key, cell, label) in zip(axes, panels, strict=True):
        before = [cell((r["adaptive"].get("non_adaptive") or {}).get(key)) for _, r in pairs]
        after = [cell(r["adaptive"]["adaptive"][key]) for _, r in pairs]
        for x, a, b in zip(xs, before, after, strict=True):
            if a.value is not None and b.value is not None:
                ax.plot([x - 0.12, x + 0.12], [a.value, b.value], color="0.6", lw=1)
            elif a.value is None:
                ax.text(x - 0.12, 0.03, "no non-adaptive set", rotation=90, ha="center", va="bottom", fontsize=6,
                        color="C0")  # fmt: skip
        _cellbar(ax, [x - 0.12 for x in xs], before, color="C0", label="non-adaptive (PGD)")
        _cellbar(ax, [x + 0.12 for x in xs], after, color="C3", label="adaptive")
        if key == "detection_auroc":
            ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax.set_xticks(xs, [f"{m.label}\n{r['name']}" for m, r in pairs], fontsize=7, rotation=30, ha="right")
        ax.set_xlim(-0.6, len(pairs) - 0.4)
        ax.set_ylabel(label, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
