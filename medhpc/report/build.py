"""Write a sweep's report from its stored evaluations: tables, figures, a gallery and two
index pages.

Layout, beside the results (``OUT/report/``)::

    index.html                    the report as a web page (no server needed): sortable tables,
                                  figures, warnings on the cells they concern, each model's
                                  adversarial gallery, links to every file behind a number
    index.md                      every table inline and every figure, for reading on a forge
    tables/KEY.{md,csv,tex,json}  each table four ways
    figures/*.png                 accuracy vs β, accuracy vs ε, worst case, adaptive attacks,
                                  risk–coverage, detection ROC, maps
    gallery/MODEL/*.png           the gallery's tiles (clean, adversarial, perturbation, maps)
    summary.md                    accuracy under attack per model (the short table)
    summary.json             the numbers behind the short table; written last (the report's
                             done marker, with ``format``)

Nothing is recomputed from models: the evaluate jobs stored every number and map this needs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medhpc import __version__, atomic
from medhpc.report import plots, tables
from medhpc.report.config import ReportSettings
from medhpc.report.gallery import write_gallery
from medhpc.report.html import Figure, render_index
from medhpc.report.results import ModelResult, ReportError, load_results, recipe_title
from medhpc.report.table import Table

log = logging.getLogger(__name__)

#: Version of the report layout; an older ``summary.json`` is not a finished report.
REPORT_FORMAT = 3


def input_digest(path: Path | str) -> str:
    """SHA-256 of an evaluation file as the report read it: an evaluation redone under the same
    job name (a newer evaluation format) still makes the report stale."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _slug(*parts: str) -> str:
    return "-".join(p.replace(",", "").replace(" ", "_").replace("/", "_") for p in parts if p)


def _figures(results: list[ModelResult], figdir: Path) -> list[tuple[str, str, Path]]:
    """(section, caption, path) of every figure."""
    out: list[tuple[str, str, Path]] = []
    groups: dict[tuple[str, str, str], list[ModelResult]] = {}
    for m in results:
        groups.setdefault(m.group, []).append(m)
    for (dataset, arch, weighting), models in groups.items():
        title = f"{dataset}, {arch}" + recipe_title(weighting)
        if any(m.spec.axis is not None for m in models):
            p = plots.accuracy_vs_beta(models, f"Accuracy against β: {title}",
                                       figdir / f"{_slug('acc-vs-beta', dataset, arch, weighting)}.png")  # fmt: skip
            out.append(("Accuracy against β", title, p))
        p = plots.accuracy_vs_eps(models, f"Accuracy against ε: {title}",
                                  figdir / f"{_slug('acc-vs-eps', dataset, arch, weighting)}.png")  # fmt: skip
        out.append(("Accuracy against ε", title, p))
    for dataset in dict.fromkeys(m.dataset for m in results):
        models = [m for m in results if m.dataset == dataset]
        if any(tables.worst_case_pairs(m) for m in models):
            p = plots.worst_case_gap(models, f"As the paper measured vs the worst case: {dataset}",
                                     figdir / f"{_slug('worst-case', dataset)}.png")  # fmt: skip
            out.append(("As the paper measured vs the worst case", dataset, p))
    for dataset in dict.fromkeys(m.dataset for m in results):
        models = [m for m in results if m.dataset == dataset]
        if any(tables.adaptive_pairs(m) for m in models):
            p = plots.adaptive_detection(models, f"Uncertainty detection against an adaptive attacker: {dataset}",
                                         figdir / f"{_slug('adaptive', dataset)}.png")  # fmt: skip
            out.append(("Uncertainty detection against an adaptive attacker", dataset, p))
    for m in results:
        out.append(
            ("Risk–coverage", f"{m.dataset}: {m.label}", plots.risk_coverage(m, figdir / f"risk-coverage-{m.name}.png"))
        )
    for m in results:
        if any(r.get("uncertainty", {}).get("detection") for r in m.attacks):
            out.append(
                ("Detection ROC", f"{m.dataset}: {m.label}", plots.detection_roc(m, figdir / f"roc-{m.name}.png"))
            )
    for m in results:
        mp = m.evaluation.get("maps")
        if not mp:
            continue
        npz = m.eval_path.parent / mp["file"]
        if not npz.is_file():
            raise ReportError(f"{npz}: the maps of {m.run} are missing (delete {m.eval_path} and rerun the sweep)")
        with np.load(npz) as f:
            arrays = {k: f[k] for k in f.files}
        if arrays["images"].shape[0] == 0:
            continue
        classes = list(m.metrics.get("classes") or [str(c) for c in range(2)])
        for kind in mp["kinds"]:
            section = "Grad-CAM maps" if kind == "gradcam" else "Attention maps"
            p = plots.maps_figure(m, arrays, kind, classes, figdir / f"{kind}-{m.name}.png")
            out.append((section, f"{m.dataset}: {m.label}", p))
    return out


def _summary_md(results: list[ModelResult]) -> str:
    names = list(dict.fromkeys(r["name"] for m in results for r in m.attacks))
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in results:
        acc = {r["name"]: f"{r['accuracy']:.3f}" for r in m.attacks}
        lines.append(f"| {m.label} (`{m.name}`) | " + " | ".join(acc.get(n, "") for n in names) + " |")
    return "\n".join(lines) + "\n"


def _index(name: str, results: list[ModelResult], tabs: list[Table], figs: list[tuple[str, str, Path]],
           out: Path, settings: ReportSettings) -> str:  # fmt: skip
    lines = [f"# Report: {name}", "",
             f"medhpc {__version__}; {len(results)} models; every number below comes from the stored "
             "evaluations (`eval/`), shards (`shards/`) and training runs (`runs/`). The same report as a "
             "web page, with each model's adversarial gallery and sortable tables: [index.html](index.html).",
             ""]  # fmt: skip
    warned = [(m, w) for m in results for w in m.evaluation.get("warnings", [])]
    if warned:
        lines += ["## Gradient-masking warnings", ""]
        lines += [f"- **{m.label}** ({m.dataset}), {w['kind']}: {w['message']}" for m, w in warned]
        lines.append("")
    lines += ["## Contents", "", "Tables:", ""]
    for t in tabs:
        lines.append(f"- [{t.title}](#{_anchor(t.title)}) "
                     f"([md](tables/{t.key}.md), [csv](tables/{t.key}.csv), [tex](tables/{t.key}.tex), "
                     f"[json](tables/{t.key}.json))")  # fmt: skip
    lines += ["", "Figures:", ""]
    for section in dict.fromkeys(s for s, _, _ in figs):
        lines.append(f"- [{section}](#{_anchor(section)})")
    lines += ["", "## Tables", ""]
    for t in tabs:
        lines += [t.markdown(), f"Files: [md](tables/{t.key}.md), [csv](tables/{t.key}.csv), "
                  f"[tex](tables/{t.key}.tex), [json](tables/{t.key}.json)", ""]  # fmt: skip
    lines += ["## Figures", ""]
    for section in dict.fromkeys(s for s, _, _ in figs):
        lines += [f"### {section}", ""]
        for s, caption, p in figs:
            if s == section:
                rel = p.relative_to(out).as_posix()
                lines += [f"**{caption}** ([png]({rel}))", "", f"![{section}: {caption}]({rel})", ""]
    lines += ["## Settings", "",
              f"Detection operating point: FPR {settings.fpr:g}; selective-prediction coverages: "
              f"{', '.join(f'{c:g}' for c in settings.coverages)}; maps: "
              + (f"first {settings.map_images or 'all'} images, Grad-CAM target {settings.target}, "
                 f"{settings.grid}×{settings.grid} grid." if settings.maps else "off."), ""]  # fmt: skip
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """GitHub-style heading anchor."""
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return keep.replace(" ", "-")


def build_report(
    evaluations: list[str] | tuple[str, ...], out: Path | str, *, name: str = "sweep",
    settings: ReportSettings | None = None, job: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write the whole report into ``out`` and return the summary it ends with (``job``, the
    sweep job's key, is recorded in it)."""
    settings = settings or ReportSettings()
    out = Path(out)
    results = load_results(list(evaluations))
    if not results:
        raise ReportError("no evaluated models to report on")
    tabs = tables.all_tables(results, settings.fpr, settings.coverages)
    for t in tabs:
        atomic.write_text(t.markdown(), out / "tables" / f"{t.key}.md")
        atomic.write_text(t.csv(), out / "tables" / f"{t.key}.csv")
        atomic.write_text(t.latex(), out / "tables" / f"{t.key}.tex")
        atomic.write_text(t.json(), out / "tables" / f"{t.key}.json")
    figs = _figures(results, out / "figures")
    galleries = [g for g in (write_gallery(m, out) for m in results) if g is not None]
    atomic.write_text(_index(name, results, tabs, figs, out, settings), out / "index.md")
    html_figs = [Figure(s, c, p.relative_to(out).as_posix()) for s, c, p in figs]
    atomic.write_text(render_index(name, results, tabs, html_figs, galleries, out, settings), out / "index.html")
    atomic.write_text(_summary_md(results), out / "summary.md")
    summary = {
        "format": REPORT_FORMAT, "job": job, "medhpc_version": __version__, "name": name,
        "inputs": {str(m.eval_path): m.evaluation.get("job") for m in results},
        "input_digests": {str(m.eval_path): input_digest(m.eval_path) for m in results},
        "tables": [t.key for t in tabs], "figures": [p.relative_to(out).as_posix() for _, _, p in figs],
        "pages": ["index.html", "index.md"],
        "gallery": {g.model: {"panels": len(g.panels), "attacks": g.attacks} for g in galleries},
        "models": [{"run": m.run, "dataset": m.dataset, "arch": m.arch, "head": m.head, "beta": m.beta,
                    "weighting": m.weighting, "clean_test": m.metrics["test"],
                    "attacks": [{k: v for k, v in r.items() if k not in ("uncertainty", "maps")} for r in m.attacks],
                    "warnings": m.evaluation.get("warnings", [])} for m in results],
    }  # fmt: skip
    atomic.write_json(summary, out / "summary.json")
    log.info("report: %d tables, %d figures, %d gallery panels: %s", len(tabs), len(figs),
             sum(len(g.panels) for g in galleries), out / "index.html")  # fmt: skip
    return summary
