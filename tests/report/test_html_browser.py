"""The report's page in a real browser: Debian's chromium driven through chromium-driver by
Selenium (Python's playwright downloads a browser of its own, which cannot be used here).

:func:`ensure_chromium` installs the two Debian packages with apt-get when they are missing
and the tests run as root (as CI does); otherwise these tests skip, saying why.
:func:`open_page` opens a report's ``index.html`` from the file system and returns what the
browser saw: every image's natural width, every link, the gallery's panels. The page is
checked for a small stored sweep (fast) and for the demo's own report (slow, the real run).
Screenshots are kept under ``test-artefacts/`` (``MEDHPC_TEST_ARTEFACTS``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import yaml

from medhpc.attacks.config import AttackConfig
from medhpc.config import from_dict
from medhpc.report.build import build_report
from medhpc.report.config import ReportSettings
from medhpc.store import ShardReader

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PACKAGES = ("chromium", "chromium-driver")
#: Where screenshots are kept for a person to look at after the run.
ARTEFACTS = Path(os.environ.get("MEDHPC_TEST_ARTEFACTS", Path(__file__).resolve().parents[2] / "test-artefacts"))


def ensure_chromium() -> str | None:
    """Install chromium and chromium-driver if needed; None when ready, else why not."""
    if Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (f"{CHROMIUM} or {CHROMEDRIVER} is missing; install the Debian packages {' '.join(PACKAGES)} "
                "(the tests do it themselves when run as root with apt-get)")  # fmt: skip
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = Path(tempfile.gettempdir(), "medhpc-chromium-install.log")
    with log.open("w") as fh:
        ok = subprocess.run(["apt-get", "update"], stdout=fh, stderr=subprocess.STDOUT, env=env).returncode == 0
        ok = ok and subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], stdout=fh,
                                   stderr=subprocess.STDOUT, env=env).returncode == 0  # fmt: skip
    if not ok or not Path(CHROMEDRIVER).is_file():
        raise RuntimeError(f"apt-get could not install {' '.join(PACKAGES)}; see {log}")
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver with the flags this closed network needs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="medhpc-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", "--window-size=1400,1000", f"--user-data-dir={profile}"]  # fmt: skip
    for flag in flags:
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(120)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Page:
    images: list[dict[str, Any]]  # src, naturalWidth
    links: list[str]  # every <a href>, as the browser resolved it
    ids: set[str]  # every element id on the page
    panels: list[dict[str, str]]  # data-model, data-attack, data-index of each gallery panel
    title: str


_READ = """
return {
  images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src, complete: i.complete,
                                                  naturalWidth: i.naturalWidth})),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  panels: Array.from(document.querySelectorAll('figure.panel')).map(p => ({model: p.dataset.model,
                                                  attack: p.dataset.attack, index: p.dataset.index})),
  title: document.title,
};
"""


def open_page(driver: Any, index: Path, timeout: float = 120.0) -> Page:
    """Load ``index`` and wait until every image has finished loading (or failed)."""
    driver.get(index.resolve().as_uri())
    deadline = time.monotonic() + timeout
    while True:
        data = driver.execute_script(_READ)
        if all(i["complete"] for i in data["images"]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return Page(images=data["images"], links=data["links"], ids=set(data["ids"]), panels=data["panels"],
                title=data["title"])  # fmt: skip


def broken_links(page: Page, index: Path) -> list[str]:
    """Links that point at a missing local file or a missing anchor of the page itself."""
    bad = []
    here = index.resolve()
    for href in page.links:
        u = urlparse(href)
        if u.scheme != "file":
            continue  # the report has no remote links; none are checked here
        target = Path(unquote(u.path))
        if target == here:
            if u.fragment and unquote(u.fragment) not in page.ids:
                bad.append(href)
        elif not target.exists():
            bad.append(href)
    return bad


def screenshot(driver: Any, name: str) -> Path:
    """A full-page PNG (at most 20 000 px tall) kept under :data:`ARTEFACTS`."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1400, min(max(height, 800), 20000))
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / name
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"chromium could not save the screenshot {path}")
    driver.set_window_size(1400, 1000)
    return path


# --- the tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    pytest.importorskip("selenium", reason="the browser tests drive chromium through selenium (the test extras)")
    reason = ensure_chromium()
    if reason is not None:
        pytest.skip(reason)
    with chromium() as d:
        yield d


def _assert_page_sound(page: Page, index: Path) -> None:
    assert page.images, "the page shows no image"
    unloaded = [i["src"] for i in page.images if not i["naturalWidth"]]
    assert not unloaded, f"{len(unloaded)} of {len(page.images)} images did not load, e.g. {unloaded[:3]}"
    on_disk = {p.resolve() for p in index.parent.rglob("*.png")}
    shown = {Path(unquote(urlparse(i["src"]).path)).resolve() for i in page.images}
    assert shown == on_disk, f"PNG files not on the page: {sorted(map(str, on_disk - shown))[:5]}"
    assert not broken_links(page, index), f"broken links: {broken_links(page, index)}"
    local = [h for h in page.links if urlparse(h).scheme == "file"]
    for ext in ("csv", "tex", "json", "md"):
        assert any(h.endswith(f".{ext}") for h in local), f"no link to a .{ext} file"


def test_the_report_page_loads_every_image_link_and_panel_in_chromium(
    driver: Any, tmp_path: Path, write_stored: Any
) -> None:
    fx = write_stored(tmp_path)  # tests/report/conftest.py: a stored sweep with known numbers
    build_report(fx.evaluations, tmp_path / "report", name="stored")
    index = tmp_path / "report" / "index.html"
    page = open_page(driver, index)
    assert page.title == "Report: stored"
    _assert_page_sound(page, index)
    # The fixture's maps files: 2 images under each perturbing attack, for the attention and VIB models.
    expected = {}
    for ev in fx.evaluations:
        npz = Path(ev).with_suffix(".maps.npz")
        if npz.is_file():
            with np.load(npz) as f:
                expected[Path(ev).stem] = len(f["attacks"]) * len(f["images"])
    got: dict[str, int] = {}
    for p in page.panels:
        got[p["model"]] = got.get(p["model"], 0) + 1
    assert got == expected
    assert screenshot(driver, "report-stored.png").stat().st_size > 10_000


def test_a_column_sorts_when_its_heading_is_clicked(driver: Any, tmp_path: Path, write_stored: Any) -> None:
    from selenium.webdriver.common.by import By

    fx = write_stored(tmp_path, maps=False)
    build_report(fx.evaluations, tmp_path / "report")
    open_page(driver, tmp_path / "report" / "index.html")
    table = driver.find_element(By.CSS_SELECTOR, "#table-appendix-a table")
    col = [h.text for h in table.find_elements(By.CSS_SELECTOR, "thead th")].index("accuracy")

    def column() -> list[float]:
        cells = table.find_elements(By.CSS_SELECTOR, f"tbody tr td:nth-child({col + 1})")
        return [float(c.get_attribute("data-sort")) for c in cells]

    before = column()
    assert before != sorted(before), "the fixture's accuracies must start unsorted for this test to mean anything"
    heading = table.find_elements(By.CSS_SELECTOR, "thead th")[col]
    heading.click()
    assert column() == sorted(before)
    heading.click()
    assert column() == sorted(before, reverse=True)


def test_a_masking_warning_is_highlighted_on_the_cell_it_concerns(
    driver: Any, tmp_path: Path, write_stored: Any
) -> None:
    import json

    from selenium.webdriver.common.by import By

    fx = write_stored(tmp_path, maps=False)
    ev = Path(fx.evaluations[0])  # the linear model
    data = json.loads(ev.read_text())
    data["warnings"] = [{"kind": "accuracy_rises_with_eps", "message": "fgsm-linf-eps0.02: accuracy rises",
                         "attacks": ["fgsm-linf-eps0.01", "fgsm-linf-eps0.02"],
                         "explanation": "A one-step attack overshoots."}]  # fmt: skip
    ev.write_text(json.dumps(data))
    build_report(fx.evaluations, tmp_path / "report")
    open_page(driver, tmp_path / "report" / "index.html")
    flagged = driver.find_elements(By.CSS_SELECTOR, "#table-appendix-b-aptos td.flag")
    assert len(flagged) == 2
    for cell in flagged:
        row = cell.find_element(By.XPATH, "..")
        assert row.find_elements(By.TAG_NAME, "td")[0].text in ("fgsm-linf-eps0.01", "fgsm-linf-eps0.02")
        assert "accuracy rises" in cell.get_attribute("title")
    box = driver.find_element(By.ID, "warnings").text
    assert "fgsm-linf-eps0.02: accuracy rises" in box and "A one-step attack overshoots." in box


def _panels_in_shards(out: Path, settings: ReportSettings) -> dict[str, dict[str, tuple[int, set[int]]]]:
    """Per model (run folder name) and perturbing attack, read from the attack shards
    themselves: how many panels the gallery must show (``figure_images`` of the first
    ``map_images`` images) and the test indices they may come from (those first images; the
    gallery takes those with a lesion first)."""
    import json

    found: dict[str, dict[str, tuple[int, set[int]]]] = {}
    for ev in sorted((out / "eval").glob("*.json")):
        per_attack: dict[str, tuple[int, set[int]]] = {}
        for row in json.loads(ev.read_text())["attacks"]:
            reader = ShardReader(row["shards"], verify=False)
            attack = from_dict(AttackConfig, reader.attack_config, source=row["shards"])
            if not attack.spec.perturbs:
                continue
            n = len(reader) if settings.map_images is None else min(len(reader), settings.map_images)
            index = reader.read_range(0, n, ["index"])["index"]
            per_attack[row["name"]] = (min(settings.figure_images, n), {int(i) for i in index})
        found[ev.stem] = per_attack
    return found


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_demo_report_opens_in_chromium(driver: Any, demo_sweep: Path) -> None:
    """The real ``make demo`` study's page: every image loads, every local link resolves, and
    the gallery shows one panel per image the shards hold for it."""
    index = demo_sweep / "report" / "index.html"
    page = open_page(driver, index)
    _assert_page_sound(page, index)
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "medhpc/configs/sweep-demo.yaml").read_text())
    settings = from_dict(ReportSettings, config.get("report") or {}, source="sweep-demo.yaml report")
    expected = _panels_in_shards(demo_sweep, settings)
    assert sum(n for m in expected.values() for n, _ in m.values()) > 0, "the demo's shards hold no attacked image"
    shown: dict[str, dict[str, list[int]]] = {}
    for p in page.panels:
        shown.setdefault(p["model"], {}).setdefault(p["attack"], []).append(int(p["index"]))
    assert set(shown) == {m for m, per in expected.items() if per}
    for model, per_attack in expected.items():
        assert set(shown.get(model, {})) == set(per_attack), model
        for attack, (count, allowed) in per_attack.items():
            got = shown[model][attack]
            assert len(got) == count, f"{model}, {attack}: {len(got)} panels, the shards hold {count}"
            assert set(got) <= allowed and len(set(got)) == len(got), f"{model}, {attack}: panels {got}"
    assert screenshot(driver, "report-demo.png").stat().st_size > 10_000
