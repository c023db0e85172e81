"""The report as one static web page, ``report/index.html``, rendered with Jinja2.

It needs no server: every image and link is a relative path inside the sweep's output folder,
so it opens from the file system or from a cluster's web share of ``OUT``. The page holds every
table (sortable by any column; the masking warnings highlighted on the cells they concern),
every figure, each model's adversarial gallery, and links to the files behind the numbers
(each table as Markdown, CSV, LaTeX and JSON; each model's evaluation, metrics and training
history). The templates live in ``medhpc/report/templates/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medhpc import __version__
from medhpc.report.config import ReportSettings
from medhpc.report.gallery import Gallery
from medhpc.report.results import ModelResult
from medhpc.report.table import Table


@dataclass(frozen=True)
class Figure:
    section: str
    caption: str
    src: str  # relative to the report folder


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("medhpc.report", "templates"), autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )  # fmt: skip
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.0f} %"
    return env


def _rel(path: Path | str, out: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()


def _model_links(m: ModelResult, out: Path) -> dict[str, str]:
    """The files behind one model's numbers, where they exist."""
    run = Path(m.run)
    links = {"evaluation (JSON)": m.eval_path}
    for label, name in (("clean metrics (JSON)", "metrics.json"), ("training history (JSON)", "history.json"),
                        ("config", "config.yaml")):  # fmt: skip
        if (run / name).is_file():
            links[label] = run / name
    mp = m.evaluation.get("maps")
    if mp and (m.eval_path.parent / mp["file"]).is_file():
        links["maps (npz)"] = m.eval_path.parent / mp["file"]
    return {label: _rel(p, out) for label, p in links.items()}


def anchor(*parts: str) -> str:
    """An HTML id from free text."""
    return "-".join("".join(ch if ch.isalnum() else "-" for ch in p.lower()).strip("-") for p in parts if p)


def render_index(name: str, results: list[ModelResult], tabs: list[Table], figs: list[Figure],
                 galleries: list[Gallery], out: Path, settings: ReportSettings) -> str:  # fmt: skip
    """The page's HTML text."""
    warned = [{"model": m.label, "run": m.name, "dataset": m.dataset, **w}
              for m in results for w in m.evaluation.get("warnings", [])]  # fmt: skip
    sections = list(dict.fromkeys(f.section for f in figs))
    models = [{"name": m.name, "label": m.label, "dataset": m.dataset, "links": _model_links(m, out),
               "gallery": next((g for g in galleries if g.model == m.name), None)} for m in results]  # fmt: skip
    return str(_environment().get_template("index.html.j2").render(
        name=name, version=__version__, results=results, tables=tabs, figures=figs, sections=sections,
        models=models, warnings=warned, settings=settings, anchor=anchor,
        panels=sum(len(g.panels) for g in galleries),
    ))  # fmt: skip
