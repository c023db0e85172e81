"""The report folder: every table three ways, every figure, an index that links them all,
and errors that name the stored file at fault."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medhpc.report.analyse import EVAL_FORMAT
from medhpc.report.build import REPORT_FORMAT, build_report
from medhpc.report.results import ReportError

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_writes_every_table_and_figure_and_links_them(stored, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "report"
    summary = build_report(stored.evaluations, out, name="fixture")
    assert summary["format"] == REPORT_FORMAT
    assert summary["tables"] == ["appendix-a", "appendix-b-aptos", "appendix-c-aptos-resnet50", "wasserman",
                                 "detection", "selective", "maps"]  # fmt: skip
    for key in summary["tables"]:
        for ext in ("md", "csv", "tex"):
            assert (out / "tables" / f"{key}.{ext}").stat().st_size > 50, (key, ext)
    names = stored.names
    expected = {"figures/acc-vs-beta-aptos-resnet50-none.png", "figures/acc-vs-eps-aptos-resnet50-none.png"}
    expected |= {f"figures/risk-coverage-{n}.png" for n in names.values()}
    expected |= {f"figures/roc-{n}.png" for n in names.values()}
    expected |= {f"figures/gradcam-{names[k]}.png" for k in ("attention", "vib-0.001", "vib-0.1")}
    expected |= {f"figures/attention-{names['attention']}.png"}
    assert set(summary["figures"]) == expected
    for rel in expected:
        data = (out / rel).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, rel
    index = (out / "index.md").read_text()
    linked = set(re.findall(r"\]\(([^)#]+)\)", index))
    assert expected <= linked
    assert {f"tables/{k}.{e}" for k in summary["tables"] for e in ("md", "csv", "tex")} <= linked
    assert "### Appendix B: accuracy under attack, aptos" in index
    assert not list(out.rglob("*.tmp"))
    assert json.loads((out / "summary.json").read_text())["models"][0]["attacks"][0]["name"] == "none"
    assert (out / "summary.md").read_text().startswith("| model | none |")


def test_a_worst_case_row_adds_its_table_and_figure(stored, add_worst_case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_worst_case(stored)
    out = tmp_path / "report"
    summary = build_report(stored.evaluations, out, name="fixture")
    assert "worst-case" in summary["tables"]
    assert (out / "figures" / "worst-case-aptos.png").stat().st_size > 1000
    page = (out / "index.html").read_text()
    assert "figures/worst-case-aptos.png" in page and "As the paper measured vs the per-image worst case" in page


def test_report_errors_name_the_missing_or_stale_file(stored, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = str(tmp_path / "eval" / "nope.json")
    with pytest.raises(ReportError, match="nope.json: the evaluation is missing"):
        build_report([*stored.evaluations, missing], tmp_path / "r1")
    ev = Path(stored.evaluations[0])
    data = json.loads(ev.read_text())
    ev.write_text(json.dumps({**data, "format": 1}))
    with pytest.raises(ReportError, match=f"{ev.name}: evaluation format 1 is not {EVAL_FORMAT}; rerun the sweep"):
        build_report(stored.evaluations, tmp_path / "r2")
    ev.write_text(json.dumps(data))
    npz = next((tmp_path / "eval").glob("*.maps.npz"))
    npz.unlink()
    with pytest.raises(ReportError, match=re.escape(f"{npz}: the maps of")):
        build_report(stored.evaluations, tmp_path / "r3")
    assert not (tmp_path / "r3" / "summary.json").exists()  # the done marker is written last
