"""A small stored sweep with known numbers: four models (linear, attention, VIB at two β) on
one dataset, four attacks on 8 images, written as the evaluate jobs write them."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from medhpc.attacks.config import AttackConfig
from medhpc.attacks.robustness import attack_row
from medhpc.report.analyse import EVAL_FORMAT
from medhpc.report.uncertainty import attack_uncertainty

N = 8
ATTACKS = [AttackConfig(attack="none"), AttackConfig(attack="fgsm", eps=0.01), AttackConfig(attack="fgsm", eps=0.02),
           AttackConfig(attack="pgd", eps=0.02, step_size=0.01, steps=5)]  # fmt: skip
#: Images correct under each attack, per model (of N = 8).
CORRECT = {
    "linear": [6, 4, 2, 0],
    "attention": [6, 5, 4, 2],
    "vib-0.001": [5, 4, 3, 2],
    "vib-0.1": [4, 4, 4, 3],
}
#: Clean test confusion counts (tp, fp, fn, tn) and ROC-AUC per model (n = 20).
CLEAN = {"linear": (7, 2, 3, 8, 0.8), "attention": (8, 1, 2, 9, 0.9), "vib-0.001": (6, 4, 4, 6, 0.6),
         "vib-0.1": (5, 5, 5, 5, 0.5)}  # fmt: skip


@dataclass
class Fixture:
    root: Path
    evaluations: list[str]
    names: dict[str, str]  # model key -> run folder name


def _fields(correct: int, stochastic: bool, rng: np.random.Generator, attack: str) -> dict[str, np.ndarray]:
    labels = np.array([0, 1] * (N // 2))
    adv_pred = labels.copy()
    adv_pred[correct:] = 1 - labels[correct:]
    clean_pred = labels.copy()
    success = adv_pred != clean_pred
    if attack == "none":
        adv_pred, success = clean_pred.copy(), np.zeros(N, bool)
    f: dict[str, np.ndarray] = {"labels": labels, "clean_pred": clean_pred, "adv_pred": adv_pred, "success": success}
    s = 3 if stochastic else 1
    p1 = rng.uniform(0.05, 0.95, size=(s, N))
    clean = np.stack([1 - p1, p1], -1)
    adv = np.stack([1 - p1[:, ::-1], p1[:, ::-1]], -1) if attack != "none" else clean
    f["clean_probs"], f["adv_probs"] = clean.mean(0), adv.mean(0)
    if stochastic:
        f["clean_sample_probs"], f["adv_sample_probs"] = clean, adv
    return f


def write_fixture(root: Path, maps: bool = True) -> Fixture:
    rng = np.random.default_rng(0)
    evaluations, names = [], {}
    for i, (key, counts) in enumerate(CORRECT.items()):
        head, beta = (key.split("-")[0], float(key.split("-")[1])) if key.startswith("vib") else (key, None)
        name = f"resnet50-{head}-{i:012d}"
        names[key] = name
        run = root / "runs" / name
        run.mkdir(parents=True)
        model: dict[str, Any] = {"arch": "resnet50", "head": head, "vib": {"beta": beta} if beta is not None else None}
        (run / "config.yaml").write_text(yaml.safe_dump({"model": model, "loss_weighting": "none"}))
        tp, fp, fn, tn, auc = CLEAN[key]
        test = {"n": 20, "accuracy": (tp + tn) / 20, "precision": tp / (tp + fp), "recall": tp / (tp + fn),
                "f1": 2 * tp / (2 * tp + fp + fn), "specificity": tn / (tn + fp),
                "balanced_accuracy": (tp / (tp + fn) + tn / (tn + fp)) / 2, "roc_auc": auc,
                "tp": tp, "fp": fp, "fn": fn, "tn": tn}  # fmt: skip
        (run / "metrics.json").write_text(json.dumps({"arch": "resnet50", "head": head, "classes": ["no_dr", "dr"],
                                                      "test": test}))  # fmt: skip
        rows = []
        for cfg, correct in zip(ATTACKS, counts, strict=True):
            f = _fields(correct, head == "vib", rng, cfg.attack)
            ok = f["success"].astype(float)
            totals = {"n": float(N), "correct": float(correct), "success": ok.sum(), "l2": 0.0, "linf": 0.0,
                      "l2_success": 0.0, "linf_success": 0.0}  # fmt: skip
            row = {**attack_row(cfg, totals), "shards": str(root / "shards" / name / cfg.name)}
            row["uncertainty"] = attack_uncertainty(f, detect=cfg.attack != "none")
            rows.append(row)
        ev: dict[str, Any] = {"format": EVAL_FORMAT, "run": str(run), "dataset": "aptos", "n": N, "attacks": rows,
                              "warnings": [], "maps": None}  # fmt: skip
        out = root / "eval" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        if maps and head in ("attention", "vib"):
            kinds = ["gradcam", "attention"] if head == "attention" else ["gradcam"]
            adv_names = [r["name"] for r in rows if r["config"]["attack"] != "none"]
            arrays: dict[str, np.ndarray] = {
                "images": rng.integers(0, 255, size=(2, 16, 16, 3), dtype=np.uint8),
                "masks": np.pad(np.ones((2, 4, 4), bool), ((0, 0), (6, 6), (6, 6))),
                "index": np.arange(2), "labels": np.array([1, 1]), "clean_pred": np.array([1, 0]),
                "attacks": np.array(adv_names), "adv_pred": np.zeros((len(adv_names), 2), dtype=np.int64),
                "clean_conf": np.array([0.9, 0.6], dtype=np.float32),
                "adv_conf": np.full((len(adv_names), 2), 0.75, dtype=np.float32),
                "adv_images": rng.integers(0, 255, size=(len(adv_names), 2, 16, 16, 3), dtype=np.uint8),
                "perturbation": rng.uniform(-0.02, 0.02, size=(len(adv_names), 2, 16, 16, 3)).astype(np.float16),
                "linf": np.full((len(adv_names), 2), 0.02, dtype=np.float32),
            }  # fmt: skip
            score = {"pointing_game": 0.5, "top_cell_iou": 0.25, "n_lesion": 4}
            for k in kinds:
                arrays[f"{k}_clean"] = rng.random((2, 2, 2))
                arrays[f"{k}_adv"] = rng.random((len(adv_names), 2, 2, 2))
                for r in rows:
                    if r["config"]["attack"] != "none":
                        r.setdefault("maps", {})[k] = {"adversarial": {**score, "pointing_game": 0.25},
                                                       "shift": {"correlation": 0.5, "abs_diff": 0.125}}  # fmt: skip
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            (out.parent / f"{name}.maps.npz").write_bytes(buf.getvalue())
            ev["maps"] = {"n": N, "image_size": 16, "grid": 2, "target": "label", "kinds": kinds,
                          "clean": dict.fromkeys(kinds, score), "file": f"{name}.maps.npz"}  # fmt: skip
        out.write_text(json.dumps(ev))
        evaluations.append(str(out))
    return Fixture(root, evaluations, names)


#: Images (of 8) the worst case leaves correct per model, and which member broke how many.
WORST = {"linear": (0, [3, 3]), "attention": (1, [2, 1]), "vib-0.001": (2, [1, 1]), "vib-0.1": (0, [3, 2])}


def _add_worst_case(stored: Fixture) -> None:
    """Append a worst-case row (members FGSM and PGD at ε 0.02) to every stored evaluation."""
    from medhpc.attacks.robustness import member_breaks

    members = (AttackConfig("fgsm", eps=0.02), AttackConfig("pgd", eps=0.02, step_size=0.01, steps=5))
    cfg = AttackConfig("worst_case", eps=0.02, members=members)
    for key, path in zip(stored.names, map(Path, stored.evaluations), strict=True):
        ev = json.loads(path.read_text())
        correct, breaks = WORST[key]
        totals = {"n": 8.0, "correct": float(correct), "success": 8.0 - correct, "l2": 0.0, "linf": 0.0,
                  "l2_success": 0.0, "linf_success": 0.0}  # fmt: skip
        row = {**attack_row(cfg, totals), "broken_by": member_breaks(cfg, [8 - sum(breaks), *breaks])}
        row["uncertainty"] = ev["attacks"][-1]["uncertainty"]
        ev["attacks"].append(row)
        path.write_text(json.dumps(ev))


@pytest.fixture
def add_worst_case() -> Any:
    """:func:`_add_worst_case`: a worst-case row in every stored evaluation."""
    return _add_worst_case


@pytest.fixture
def stored(tmp_path: Path) -> Fixture:
    return write_fixture(tmp_path)


@pytest.fixture
def write_stored() -> Any:
    """:func:`write_fixture` itself, for tests that change the stored sweep before reporting."""
    return write_fixture
