"""The demo tells a true story (issue 17): ``make demo``'s study, run as it runs there
(``demo_sweep``, tests/conftest.py), trains models that learn, attacks enough images for
its accuracies to mean something, and its attacks behave as attacks on an undefended model
must: accuracy falls as the budget grows, and any gradient-masking flag in the report is
explained in words."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from medhpc.attacks.registry import get_attack
from medhpc.attacks.spec import RUNTIME

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

MIN_CLEAN_ACCURACY = 0.8
MIN_ATTACKED = 64


def _summary(demo_sweep: Path) -> dict[str, Any]:
    return json.loads((demo_sweep / "report" / "summary.json").read_text())


def _label(m: dict[str, Any]) -> str:
    return f"{m['arch']} {m['head']}" + (f" beta={m['beta']:g}" if m.get("beta") is not None else "")


def test_the_demo_keeps_the_study_shape(demo_sweep: Path) -> None:
    models = _summary(demo_sweep)["models"]
    assert sorted((m["arch"], m["head"], m["beta"]) for m in models) == [
        ("resnet50", "attention", None), ("resnet50", "linear", None),
        ("resnet50", "vib", 0.001), ("resnet50", "vib", 0.1),
    ]  # fmt: skip
    for m in models:
        attacks = {a["config"]["attack"] for a in m["attacks"]}
        assert {"none", "fgsm", "pgd", "cw_l2", "spsa"} <= attacks, (_label(m), attacks)


def test_every_model_learns(demo_sweep: Path) -> None:
    """Clean accuracy on the whole test split (metrics.json of each run, as the report holds it)."""
    for m in _summary(demo_sweep)["models"]:
        clean = m["clean_test"]
        assert clean["accuracy"] >= MIN_CLEAN_ACCURACY, (_label(m), clean)
        metrics = json.loads((Path(m["run"]) / "metrics.json").read_text())
        assert metrics["test"]["accuracy"] == clean["accuracy"]


def test_enough_images_are_attacked(demo_sweep: Path) -> None:
    for m in _summary(demo_sweep)["models"]:
        for row in m["attacks"]:
            assert row["n"] >= MIN_ATTACKED, (_label(m), row["name"], row["n"])


def _families(rows: list[dict[str, Any]], one_step: bool = False) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Rows of one iterative, bounded attack (or with ``one_step``, of FGSM) that differ only in
    ε (and what is derived from it)."""
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        cfg = row["config"]
        spec = get_attack(cfg["attack"])
        if not (spec.one_step if one_step else spec.bounded and spec.iterative):
            continue
        skip = {"eps", *spec.derived, *RUNTIME}
        out[tuple((k, str(v)) for k, v in sorted(cfg.items()) if k not in skip)].append(row)
    return out


def test_iterative_attacks_fall_monotonically_with_eps(demo_sweep: Path) -> None:
    """Every iterative attack family's accuracy is non-increasing in ε, with no tolerance; PGD
    is run at three ε or more, so the fall is visible, and ends below the clean accuracy."""
    for m in _summary(demo_sweep)["models"]:
        clean = next(r["accuracy"] for r in m["attacks"] if r["config"]["attack"] == "none")
        families = _families(m["attacks"])
        pgd = [f for f in families.values() if f[0]["config"]["attack"] == "pgd"]
        assert pgd and max(len(f) for f in pgd) >= 3, (_label(m), [r["name"] for f in pgd for r in f])
        for members in families.values():
            members = sorted(members, key=lambda r: r["config"]["eps"])
            acc = [r["accuracy"] for r in members]
            where = (_label(m), [(r["config"]["eps"], r["accuracy"]) for r in members])
            assert all(b <= a for a, b in zip(acc, acc[1:], strict=False)), where
            if len(members) >= 3:
                assert acc[-1] < clean, where


def test_fgsm_falls_with_eps_too(demo_sweep: Path) -> None:
    """A one-step attack need not be monotone in ε (a large step can overshoot), but the demo's
    ε grid is small enough that FGSM falls too, and PGD is at least as strong at every ε: the
    table reads as attacks on an undefended model should."""
    for m in _summary(demo_sweep)["models"]:
        fgsm = [f for f in _families(m["attacks"], one_step=True).values() if f[0]["config"]["attack"] == "fgsm"]
        assert fgsm and max(len(f) for f in fgsm) >= 3, _label(m)
        for members in fgsm:
            members = sorted(members, key=lambda r: r["config"]["eps"])
            acc = [r["accuracy"] for r in members]
            assert all(b <= a for a, b in zip(acc, acc[1:], strict=False)), (_label(m), acc)
        pgd = {(r["config"]["eps"], r["config"]["norm"]): r["accuracy"]
               for r in m["attacks"] if r["config"]["attack"] == "pgd"}  # fmt: skip
        for f in fgsm:
            for r in f:
                at = (r["config"]["eps"], r["config"]["norm"])
                if at in pgd:
                    assert pgd[at] <= r["accuracy"], (_label(m), at, pgd[at], r["accuracy"])


def test_the_worst_case_is_at_or_below_every_single_attack_at_its_eps(demo_sweep: Path) -> None:
    """The demo's worst case (AutoAttack's members at small budgets) leaves no more images correct
    than the strongest single attack at its ε, counts every image once among its members, and
    the report sets the two side by side."""
    summary = _summary(demo_sweep)
    for m in summary["models"]:
        worst = [r for r in m["attacks"] if r["config"]["attack"] == "worst_case"]
        assert len(worst) == 1, _label(m)
        w = worst[0]
        at = (w["config"]["eps"], w["config"]["norm"])
        singles = [r for r in m["attacks"] if r is not w and get_attack(r["config"]["attack"]).bounded
                   and (r["config"].get("eps"), r["config"].get("norm")) == at]  # fmt: skip
        assert singles, _label(m)
        where = (_label(m), w["accuracy"], [(r["name"], r["accuracy"]) for r in singles])
        assert all(w["accuracy"] <= r["accuracy"] for r in singles), where
        assert sum(b["images"] for b in w["broken_by"]) == w["n"]
        assert w["broken_by"][-1]["member"] == "none"
    rows = (demo_sweep / "report" / "tables" / "worst-case.csv").read_text().splitlines()
    assert len(rows) == 1 + len(summary["models"])


def test_every_masking_warning_is_explained(demo_sweep: Path) -> None:
    """A flag in the report is a finding to explain, never noise: each carries its paragraph,
    in the report's summary and in the evaluation it came from."""
    for m in _summary(demo_sweep)["models"]:
        for w in m["warnings"]:
            assert isinstance(w.get("explanation"), str) and w["explanation"].strip(), (_label(m), w)
    for path in sorted((demo_sweep / "eval").glob("*.json")):
        for w in json.loads(path.read_text()).get("warnings", []):
            assert w.get("explanation"), (path.name, w)


def test_tensorboard_lists_every_demo_run_with_its_epochs(demo_sweep: Path) -> None:
    """``tensorboard --logdir OUT/runs`` on the demo: tensorboard's own reader of a log folder
    (its event multiplexer, no server) finds every training run, with one value per epoch of
    history.json."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from medhpc.train import events

    runs = demo_sweep / "runs"
    trained = {p.parent.relative_to(runs).as_posix(): p for p in runs.rglob("history.json")}
    assert len(trained) == 4, sorted(trained)
    mux = EventMultiplexer(size_guidance={"scalars": 0})
    mux.AddRunsFromDirectory(str(runs))
    mux.Reload()
    assert set(mux.Runs()) == set(trained)
    for name, history_file in trained.items():
        epochs = [h["epoch"] for h in json.loads(history_file.read_text())]
        for tag in ("loss/train", "lr"):
            assert tag in events.TAGS.values()
            assert [e.step for e in mux.Scalars(name, tag)] == epochs, (name, tag)


def test_the_adaptive_attacker_is_never_caught_more_often_than_pgd(demo_sweep: Path) -> None:
    """Each model's entropy detector, and the VIB heads' mutual-information one, is fitted at 5 %
    of the validation images (to within one image) and attacked beside its non-adaptive PGD row.
    The adaptive search starts as that PGD (same seed) and keeps per image what it got past the
    detector, so its system robust accuracy (correct or rejected) is at most PGD's: exactly up to
    one image on a deterministic model (float32 scores at the threshold), up to 3 of 64 on a VIB
    head, whose deployed detector draws fresh noise."""
    summary = _summary(demo_sweep)
    for m in summary["models"]:
        rows = [r for r in m["attacks"] if r["config"]["attack"] == "adaptive"]
        want = {"predictive_entropy", "mutual_information"} if m["head"] == "vib" else {"predictive_entropy"}
        assert {r["config"]["score"] for r in rows} == want, _label(m)
        for r in rows:
            block = r["adaptive"]
            val = block["val"]
            assert abs(val["rejected"] - 0.05 * val["n"]) <= 1, (_label(m), val)
            plain, adaptive = block["non_adaptive"], block["adaptive"]
            assert plain is not None, (_label(m), r["name"])
            slack = (3 if m["head"] == "vib" else 1) / adaptive["system_accuracy"]["n"]
            where = (_label(m), r["name"], plain["system_accuracy"], adaptive["system_accuracy"])
            assert adaptive["system_accuracy"]["value"] <= plain["system_accuracy"]["value"] + slack + 1e-12, where
    rows = (demo_sweep / "report" / "tables" / "adaptive.csv").read_text().splitlines()
    assert len(rows) == 1 + sum(2 if m["head"] == "vib" else 1 for m in summary["models"])
    assert (demo_sweep / "report" / "figures" / "adaptive-aptos.png").is_file()
