"""A small table type rendered four ways: Markdown (the forge page), CSV (analysis), LaTeX
(papers) and JSON (programs), with confidence intervals kept as numbers, not only as text; the
HTML page reads :meth:`Table.html_rows` (text, sort key and warning per cell).

A cell is a value with an optional 95 % interval. Markdown and LaTeX print ``0.688 [0.444,
0.858]``; CSV gives every column that carries intervals two more columns, ``<name> lo`` and
``<name> hi``, so a spreadsheet gets numbers. Missing values print as ``–`` (empty in CSV).
"""

from __future__ import annotations

import csv
import io
import json
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
    #: (row, column) -> the gradient-masking warnings that concern that cell
    flags: dict[tuple[int, int], list[str]] = field(default_factory=dict)

    def add(self, row: Sequence[Value]) -> None:
        if len(row) != len(self.columns):
            raise ValueError(f"table {self.key}: row of {len(row)} cells for {len(self.columns)} columns")
        self.rows.append(list(row))

    def flag(self, row: int, column: int, message: str) -> None:
        """Mark a cell as concerned by a warning (highlighted on the HTML page)."""
        if not (0 <= row < len(self.rows) and 0 <= column < len(self.columns)):
            raise IndexError(f"table {self.key}: no cell ({row}, {column})")
        self.flags.setdefault((row, column), []).append(message)

    def html_rows(self) -> list[list[dict[str, Any]]]:
        """Per cell: ``text``, ``sort`` (a number for numeric cells, else the text; missing
        values sort as None) and ``flags`` (warning messages, empty when none)."""
        out = []
        for i, row in enumerate(self.rows):
            cells = []
            for j, v in enumerate(row):
                cells.append({"text": _text(v), "sort": _sort_key(v), "flags": self.flags.get((i, j), [])})
            out.append(cells)
        return out

    def json(self) -> str:
        """Every cell as a number with its interval (``{"value", "lo", "hi"}``) or as text."""
        def cell(v: Value) -> Any:
            if isinstance(v, Cell):
                return {"value": _num(v.value), "lo": _num(v.lo), "hi": _num(v.hi)}
            if isinstance(v, float):
                return _num(v)
            return v

        data = {"key": self.key, "title": self.title, "note": self.note, "columns": self.columns,
                "rows": [[cell(v) for v in row] for row in self.rows],
                "flags": [{"row": i, "column": j, "warnings": w}
                          for (i, j), w in sorted(self.flags.items())]}  # fmt: skip
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"

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


def _num(v: float | None) -> float | None:
    """JSON has no NaN: a missing or NaN value is null."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _sort_key(v: Value) -> float | str | None:
    if isinstance(v, Cell):
        return _num(v.value)
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        return _num(float(v))
    return None if v is None else str(v)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "β": r"$\beta$", "ε": r"$\varepsilon$", "–": "--", "Δ": r"$\Delta$", "≥": r"$\geq$",
          "×": r"$\times$"}  # fmt: skip


def latex_escape(s: str) -> str:
    """Escape LaTeX's special characters (and spell the Greek letters the tables use)."""
    return "".join(_LATEX.get(ch, ch) for ch in s)
