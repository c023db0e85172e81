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


# -- an attack on an uncertainty detector beside its non-adaptive counterpart ------------------

#: The adaptive attack the fixture stores (ε 0.03, so its PGD counterpart is not the fixture's
#: own PGD row) and the detector it attacked: predictive entropy above τ = 0.5 nats rejects,
#: i.e. a two-class softmax whose top probability is under ≈ 0.8 (h(0.8) = 0.5004).
ADAPTIVE = AttackConfig("adaptive", eps=0.03, norm="linf", steps=4, step_size=0.01, score="predictive_entropy")
DETECTOR = {"score": "predictive_entropy", "fpr": 0.05, "threshold": 0.5, "target": 0.2, "target_quantile": 0.5,
            "n": 40, "rejected": 2, "samples": 0, "split": "val", "seed": 0}  # fmt: skip
ADAPTIVE_N = 10
ADAPTIVE_LABELS = np.array([0, 1] * 5)
#: Clean test images: the model is wrong on 3 and 9; the top probability of each image (all
#: distinct, none near 0.8), so 7, 8 and 9 are rejected.
CLEAN_WRONG = (3, 9)
CLEAN_CONF = (0.97, 0.93, 0.96, 0.91, 0.86, 0.95, 0.92, 0.62, 0.72, 0.56)
#: Per attack: the images it leaves misclassified (the clean mistakes stay) and each adversarial
#: image's top probability. PGD's successes are uncertain (rejected but 5), the adaptive ones
#: confident (rejected: 4 and 9).
ADV_WRONG = (0, 1, 2, 3, 4, 5, 6, 9)
ADV_CONF = {"pgd": (0.61, 0.57, 0.71, 0.90, 0.66, 0.87, 0.63, 0.94, 0.89, 0.58),
            "adaptive": (0.98, 0.885, 0.875, 0.895, 0.64, 0.99, 0.905, 0.945, 0.915, 0.59)}  # fmt: skip


def _probs(pred: np.ndarray, conf: tuple[float, ...]) -> np.ndarray:
    c = np.asarray(conf)
    return np.where(pred[:, None] == 1, np.stack([1 - c, c], -1), np.stack([c, 1 - c], -1)).astype(np.float32)


def _draws(probs: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Two softmax draws (2, N, 2) around ``probs`` (their mean), apart by ``spread`` of the
    room the smaller probability leaves."""
    d = spread * probs.min(-1)
    up = np.stack([probs[:, 0] - d, probs[:, 1] + d], -1)
    down = np.stack([probs[:, 0] + d, probs[:, 1] - d], -1)
    return np.stack([up, down]).astype(np.float32)


def _adaptive_fields(kind: str, draws: bool = False) -> dict[str, Any]:
    """A set's fields; with ``draws``, two softmax draws per image around its probabilities
    (the clean images' spread growing with the index, the adversarial ones' shrinking)."""
    labels = ADAPTIVE_LABELS
    clean_pred = labels.copy()
    clean_pred[list(CLEAN_WRONG)] = 1 - labels[list(CLEAN_WRONG)]
    adv_pred = labels.copy()
    adv_pred[list(ADV_WRONG)] = 1 - labels[list(ADV_WRONG)]
    n = ADAPTIVE_N
    f: dict[str, Any] = {
        "x_adv": np.zeros((n, 3, 4, 4), np.float32), "index": np.arange(n), "ids": [f"img-{i}" for i in range(n)],
        "labels": labels, "attack_labels": labels, "clean_pred": clean_pred, "adv_pred": adv_pred,
        "clean_probs": _probs(clean_pred, CLEAN_CONF), "adv_probs": _probs(adv_pred, ADV_CONF[kind]),
        "l2": np.full(n, 0.1, np.float32), "linf": np.full(n, 0.03, np.float32), "success": adv_pred != clean_pred,
    }  # fmt: skip
    if draws:
        spread = np.linspace(0.05, 0.95, n)
        f["clean_sample_probs"] = _draws(f["clean_probs"], spread)
        f["adv_sample_probs"] = _draws(f["adv_probs"], spread[::-1] if kind == "adaptive" else spread)
    return f


def write_adaptive_sets(
    root: Path, name: str, *, counterpart: bool = True, detectors: list[dict[str, Any] | None] | None = None,
    score: str = "predictive_entropy", draws: bool = False,
) -> list[str]:  # fmt: skip
    """The adaptive set (``ADAPTIVE`` against ``score``; two shards of five images, each
    recording ``detectors[i]``, by default :data:`DETECTOR`) and, with ``counterpart``, the set
    of its ``non_adaptive()`` config, as real checksummed HDF5 shards under
    ``root/shards/name``; with ``draws``, two draws per image (a stochastic model); their folders."""
    from dataclasses import replace

    from medhpc.store import ShardMeta, write_shard

    attack = replace(ADAPTIVE, score=score)
    plain = attack.non_adaptive()
    assert plain is not None
    dets = detectors if detectors is not None else [DETECTOR, DETECTOR]
    folders = []
    for kind, cfg in (("adaptive", attack), ("pgd", plain)):
        if kind == "pgd" and not counterpart:
            continue
        folder = root / "shards" / name / cfg.name
        folder.mkdir(parents=True)
        f = _adaptive_fields(kind, draws)
        for k, (a, b) in enumerate(((0, 5), (5, 10))):
            part = {key: v[:, a:b] if key.endswith("sample_probs") else v[a:b] for key, v in f.items()}
            det = dets[k] if kind == "adaptive" else None
            meta = ShardMeta(attack=cfg, split="test", start=a, model_hash=f"model-{name}",
                             run=str(root / "runs" / name), dataset="aptos", set_size=ADAPTIVE_N,
                             samples=2 if draws else 0, meta=None if det is None else {"detector": det})  # fmt: skip
            write_shard(folder / f"{a:06d}-{b:06d}.h5", part, meta)
        folders.append(str(folder))
    return folders


def _add_adaptive(stored: Fixture, key: str = "linear", counterpart: bool = True) -> list[dict[str, Any]]:
    """Write the adaptive sets of model ``key`` and append the rows the evaluate job makes of
    them (:func:`medhpc.report.analyse.attack_rows`) to its stored evaluation; those rows."""
    from medhpc.report import ReportSettings
    from medhpc.report.analyse import attack_rows

    name = stored.names[key]
    rows = attack_rows(tuple(write_adaptive_sets(stored.root, name, counterpart=counterpart)), ReportSettings())
    path = stored.root / "eval" / f"{name}.json"
    ev = json.loads(path.read_text())
    ev["attacks"] += rows
    path.write_text(json.dumps(ev))
    return rows


@pytest.fixture
def add_adaptive() -> Any:
    """:func:`_add_adaptive`: an adaptive attack (and its PGD counterpart) in a stored evaluation."""
    return _add_adaptive


@pytest.fixture
def write_adaptive() -> Any:
    """:func:`write_adaptive_sets` itself, for tests of damaged sets."""
    return write_adaptive_sets


@pytest.fixture
def adaptive_case() -> Any:
    """The adaptive fixture's facts (``DETECTOR``, ``CLEAN_CONF``, ``CLEAN_WRONG``,
    ``ADV_WRONG``, ``ADV_CONF``) and its sets' fields (``fields(kind, draws)``), for hand
    computations."""
    from types import SimpleNamespace

    return SimpleNamespace(DETECTOR=DETECTOR, CLEAN_CONF=CLEAN_CONF, CLEAN_WRONG=CLEAN_WRONG, ADV_WRONG=ADV_WRONG,
                           ADV_CONF=ADV_CONF, fields=_adaptive_fields)  # fmt: skip
