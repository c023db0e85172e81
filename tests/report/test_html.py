"""The report's web page without a browser: the table data it renders (sort keys, JSON,
warning flags), the gallery's tiles, escaping, and a stale maps file. The page in a real
browser is tests/report/test_html_browser.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medhpc.report.build import build_report
from medhpc.report.gallery import GALLERY_KEYS, _amplified, write_gallery
from medhpc.report.results import ReportError, load_results
from medhpc.report.table import Cell, Table


def test_table_json_keeps_intervals_as_numbers_and_nan_as_null() -> None:
    t = Table("k", "T", ["model", "acc", "n"])
    t.add(["a", Cell(0.5, 0.25, 0.75), 8])
    t.add(["b", Cell(float("nan")), None])
    t.flag(0, 1, "fgsm: accuracy rises")
    data = json.loads(t.json())
    assert data["columns"] == ["model", "acc", "n"]
    assert data["rows"][0] == ["a", {"value": 0.5, "lo": 0.25, "hi": 0.75}, 8]
    assert data["rows"][1] == ["b", {"value": None, "lo": None, "hi": None}, None]
    assert data["flags"] == [{"row": 0, "column": 1, "warnings": ["fgsm: accuracy rises"]}]


def test_html_rows_give_numeric_sort_keys_and_the_flags() -> None:
    t = Table("k", "T", ["model", "acc", "n"])
    t.add(["a", Cell(0.5, 0.25, 0.75), 8])
    t.add(["b", Cell(None), None])
    t.flag(1, 0, "w")
    rows = t.html_rows()
    assert rows[0][1] == {"text": "0.500 [0.250, 0.750]", "sort": 0.5, "flags": []}
    assert rows[0][2]["sort"] == 8.0
    assert rows[1][1]["sort"] is None and rows[1][2]["sort"] is None
    assert rows[1][0] == {"text": "b", "sort": "b", "flags": ["w"]}
    with pytest.raises(IndexError, match="no cell"):
        t.flag(2, 0, "w")


def test_amplified_perturbation_reaches_black_or_white_and_zero_is_grey() -> None:
    d = np.zeros((4, 4, 3), np.float16)
    d[0, 0, 0], d[1, 1, 1] = 0.02, -0.01
    img, gain = _amplified(d)
    assert img[0, 0, 0] == 255 and img[1, 1, 1] == 64 and img[2, 2, 2] == 128
    assert math.isclose(gain, 50.0, rel_tol=1e-3)  # 0.02 -> half the range
    flat, g = _amplified(np.zeros((2, 2, 3)))
    assert (flat == 128).all() and g == 2.0


def test_the_gallery_has_a_panel_per_image_and_attack_with_its_tiles(tmp_path: Path, stored: Any) -> None:
    results = load_results(stored.evaluations)
    attention = next(m for m in results if m.head == "attention")
    g = write_gallery(attention, tmp_path / "report")
    assert g is not None
    assert len(g.panels) == 3 * 2  # the fixture: 3 perturbing attacks, 2 images
    p = g.panels[0]
    captions = [t.caption for t in p.tiles]
    assert captions[:2] == ["clean", "adversarial"] and captions[2].startswith("perturbation ×")
    assert captions[3:] == ["Grad-CAM clean", "Grad-CAM adversarial", "attention clean", "attention adversarial"]
    for t in p.tiles:
        assert (tmp_path / "report" / t.src).stat().st_size > 0
    # The fixture's predictions: clean [1, 0], adversarial 0 everywhere, confidences 0.9 / 0.75.
    assert (p.clean_pred, p.adv_pred, p.fooled) == ("dr", "no_dr", True)
    assert (p.clean_conf, p.adv_conf) == pytest.approx((0.9, 0.75))
    linear = next(m for m in results if m.head == "linear")
    assert write_gallery(linear, tmp_path / "report") is None  # evaluated without maps


def test_a_maps_file_of_an_older_medhpc_is_named_in_the_error(tmp_path: Path, stored: Any) -> None:
    m = next(m for m in load_results(stored.evaluations) if m.head == "attention")
    npz = m.eval_path.parent / m.evaluation["maps"]["file"]
    with np.load(npz) as f:
        old = {k: f[k] for k in f.files if k not in GALLERY_KEYS[4:]}
    np.savez_compressed(npz, **old)
    with pytest.raises(ReportError, match=re.escape(str(npz)) + ".*clean_conf.*older"):
        write_gallery(m, tmp_path / "report")


def test_the_page_escapes_what_it_shows_and_links_every_table_four_ways(tmp_path: Path, stored: Any) -> None:
    ev = Path(stored.evaluations[0])
    data = json.loads(ev.read_text())
    data["warnings"] = [{"kind": "accuracy_rises_with_eps", "message": "<script>alert(1)</script>",
                         "attacks": ["fgsm-linf-eps0.02"]}]  # fmt: skip
    ev.write_text(json.dumps(data))
    summary = build_report(stored.evaluations, tmp_path / "report")
    html = (tmp_path / "report" / "index.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for key in summary["tables"]:
        for ext in ("csv", "tex", "json", "md"):
            assert f'href="tables/{key}.{ext}"' in html
            assert (tmp_path / "report" / "tables" / f"{key}.{ext}").is_file()
    assert html.count('class="panel') - html.count('class="panels"') == sum(
        g["panels"] for g in summary["gallery"].values()
    )
    assert "[index.html](index.html)" in (tmp_path / "report" / "index.md").read_text()
