"""A small table type rendered three ways: Markdown (the index page), CSV (analysis) and
LaTeX (papers), with confidence intervals kept as numbers, not only as text.

A cell is a value with an optional 95 % interval. Markdown and LaTeX print ``0.688 [0.444,
0.858]``; CSV gives every column that carries intervals two more columns, ``<name> lo`` and
``<name> hi``, so a spreadsheet gets numbers. Missing values print as ``–`` (empty in CSV).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Cell:
    """A number with an optional interval ``[lo, hi]``; ``digits`` after the point; ``suffix``
    is printed after the value (``%``, ``pp``)."""

    value: float | None
    lo: float | None = None
    hi: float | None = None
    digits: int = 3
    suffix: str = ""

    def text(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "–"
        s = f"{self.value:.{self.digits}f}{self.suffix}"
        if self.lo is not None and self.hi is not None:
            s += f" [{self.lo:.{self.digits}f}, {self.hi:.{self.digits}f}]"
        return s


Value = Cell | str | int | float | None


def _text(v: Value) -> str:
    if isinstance(v, Cell):
        return v.text()
    if v is None:
        return "–"
    if isinstance(v, float):
        return Cell(v).text()
    return str(v)


@dataclass
class Table:
    """``key`` names the files (``key.md``, ``key.csv``, ``key.tex``); ``note`` says how the
    numbers were made (printed under the table in Markdown, as a LaTeX caption)."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Value]] = field(default_factory=list)
    note: str = ""

    def add(self, row: Sequence[Value]) -> None:
        if len(row) != len(self.columns):
            raise ValueError(f"table {self.key}: row of {len(row)} cells for {len(self.columns)} columns")
        self.rows.append(list(row))

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        lines = [f"### {self.title}", "", "| " + " | ".join(esc(c) for c in self.columns) + " |",
                 "|" + "---|" * len(self.columns)]  # fmt: skip
        lines += ["| " + " | ".join(esc(_text(v)) for v in row) + " |" for row in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        with_ci = [any(isinstance(r[j], Cell) and r[j].lo is not None for r in self.rows)  # type: ignore[union-attr]
                   for j in range(len(self.columns))]  # fmt: skip
        header: list[str] = []
        for name, ci in zip(self.columns, with_ci, strict=True):
            header += [name, f"{name} lo", f"{name} hi"] if ci else [name]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for row in self.rows:
            out: list[Any] = []
            for v, ci in zip(row, with_ci, strict=True):
                if isinstance(v, Cell):
                    value = (
                        ""
                        if v.value is None or (isinstance(v.value, float) and math.isnan(v.value))
                        else repr(float(v.value))
                    )
                    out.append(value)
                    if ci:
                        out += ["" if v.lo is None else repr(float(v.lo)), "" if v.hi is None else repr(float(v.hi))]
                else:
                    out.append("" if v is None else (repr(v) if isinstance(v, float) else str(v)))
                    if ci:
                        out += ["", ""]
            w.writerow(out)
        return buf.getvalue()

    def latex(self) -> str:
        align = "".join("r" if self._numeric(j) else "l" for j in range(len(self.columns)))
        lines = [
            "% " + self.title + " (medhpc report; needs \\usepackage{booktabs})",
            "\\begin{table}[ht]", "\\centering", "\\small",
            f"\\caption{{{latex_escape(self.title)}{'. ' + latex_escape(self.note) if self.note else ''}}}",
            f"\\label{{tab:{self.key}}}",
            f"\\begin{{tabular}}{{{align}}}", "\\toprule",
            " & ".join(latex_escape(c) for c in self.columns) + " \\\\", "\\midrule",
        ]  # fmt: skip
        lines += [" & ".join(latex_escape(_text(v)) for v in row) + " \\\\" for row in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines) + "\n"

    def _numeric(self, j: int) -> bool:
        return bool(self.rows) and all(isinstance(r[j], (Cell, int, float)) or r[j] is None for r in self.rows)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "β": r"$\beta$", "ε": r"$\varepsilon$", "–": "--", "Δ": r"$\Delta$", "≥": r"$\geq$",
          "×": r"$\times$"}  # fmt: skip


def latex_escape(s: str) -> str:
    """Escape LaTeX's special characters (and spell the Greek letters the tables use)."""
    return "".join(_LATEX.get(ch, ch) for ch in s)
