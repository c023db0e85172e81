"""The stored results a report is made of, one :class:`ModelResult` per evaluated model.

Everything comes from files the sweep wrote: the evaluation JSON (attacks, uncertainty, map
scores), the run's ``metrics.json`` (clean test metrics) and ``config.yaml`` (what model it
is). Nothing is recomputed from a model here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medhpc.config import ConfigError, from_dict
from medhpc.models.config import ModelConfig
from medhpc.models.registry import HEADS, get_head
from medhpc.models.spec import HeadSpec
from medhpc.report.errors import ReportError
from medhpc.train.adversarial import AdversarialConfig

__all__ = ["ModelResult", "ReportError", "attack_names", "load_result", "load_results", "recipe_key", "recipe_title"]


@dataclass(frozen=True)
class ModelResult:
    """One trained model and its evaluation."""

    run: str
    dataset: str
    arch: str
    head: str
    beta: float | None  # the head's sweep-axis value (β for VIB), None for heads without one
    weighting: str
    metrics: dict[str, Any]
    evaluation: dict[str, Any]
    eval_path: Path
    defence: str | None = None  # the adversarial-training method's title (PGD-AT, TRADES, ...), None: plain

    @property
    def name(self) -> str:
        return Path(self.run).name

    @property
    def training(self) -> str:
        """The training recipe beyond the head: the loss weighting and the defence, ``none`` for
        plain training (``weighted``, ``PGD-AT``, ``weighted, PGD-AT``)."""
        parts = [p for p in (self.weighting if self.weighting != "none" else None, self.defence) if p]
        return ", ".join(parts) or "none"

    @property
    def group(self) -> tuple[str, str, str]:
        """Models compared with each other: same data, architecture and training recipe (loss
        weighting and defence)."""
        return (self.dataset, self.arch, self.training)

    @property
    def spec(self) -> HeadSpec:
        """The head's registered facts (base model, swept axis, own map)."""
        return get_head(self.head)

    @property
    def label(self) -> str:
        """Short human name: ``resnet50 vib β=0.001`` (``, weighted`` for weighted loss)."""
        axis = self.spec.axis
        s = f"{self.arch} {self.head}" + (f" {axis.symbol}={self.beta:g}" if axis and self.beta is not None else "")
        s += ", weighted" if self.weighting == "weighted" else ""
        return s + (f", {self.defence}" if self.defence else "")

    @property
    def attacks(self) -> list[dict[str, Any]]:
        return list(self.evaluation["attacks"])

    def attack(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.attacks if r["name"] == name), None)

    def sort_key(self) -> tuple[Any, ...]:
        order = list(HEADS).index(self.head) if self.head in HEADS else len(HEADS)
        return (self.dataset, self.arch, self.defence or "", self.weighting, order, self.beta or 0.0)


def recipe_title(training: str) -> str:
    """A group's training recipe for titles: empty for plain training, else ``, weighted loss``,
    ``, PGD-AT``, ``, weighted loss, PGD-AT``."""
    return "" if training == "none" else ", " + training.replace("weighted", "weighted loss")


def recipe_key(training: str) -> str:
    """The recipe for file names and table keys: empty for plain training (old names kept)."""
    return "" if training == "none" else "-" + training.replace(", ", "-").replace(" ", "_").lower()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: {what} is missing") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: {what} is not valid JSON ({exc})") from None


def load_result(eval_path: Path | str) -> ModelResult:
    """Read one evaluation and the training run it names."""
    from medhpc.report.analyse import EVAL_FORMAT

    path = Path(eval_path)
    ev = _read_json(path, "the evaluation")
    if ev.get("format") != EVAL_FORMAT:
        raise ReportError(f"{path}: evaluation format {ev.get('format')} is not {EVAL_FORMAT}; rerun the sweep")
    run = Path(ev["run"])
    metrics = _read_json(run / "metrics.json", "the training run's metrics")
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
    except FileNotFoundError:
        raise ReportError(f"{run / 'config.yaml'}: the training run's config is missing") from None
    try:
        model = from_dict(ModelConfig, cfg["model"], source=str(run / "config.yaml"))
    except (ConfigError, KeyError, TypeError) as exc:
        raise ReportError(f"{run / 'config.yaml'}: not a model config medhpc reads ({exc})") from None
    defence = None
    if cfg.get("adversarial"):
        try:
            defence = from_dict(AdversarialConfig, cfg["adversarial"], source=str(run / "config.yaml")).spec.title
        except (ConfigError, TypeError) as exc:
            raise ReportError(f"{run / 'config.yaml'}: adversarial: not a defence medhpc reads ({exc})") from None
    return ModelResult(
        run=str(run), dataset=ev.get("dataset") or Path(metrics.get("cache", "")).stem, arch=model.arch,
        head=model.head, beta=model.head_spec.axis_value(model), weighting=cfg.get("loss_weighting", "none"),
        metrics=metrics, evaluation=ev, eval_path=path, defence=defence,
    )  # fmt: skip


def load_results(eval_paths: list[str] | tuple[str, ...]) -> list[ModelResult]:
    """Every evaluation, ordered by dataset, architecture, weighting, head and β."""
    return sorted((load_result(p) for p in eval_paths), key=ModelResult.sort_key)


def attack_names(results: list[ModelResult]) -> list[str]:
    """Attack rows in first-seen order across models."""
    return list(dict.fromkeys(r["name"] for m in results for r in m.attacks))
