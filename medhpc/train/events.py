"""Per-epoch TensorBoard scalars in the run folder, beside ``history.json``.

The event files go straight into ``<out>/<arch>-<head>-<hash>/``, so ``tensorboard --logdir OUT``
names each run by its folder (a sweep's training runs are ``OUT/runs/*``). Steps are epoch
numbers. The events of an epoch are written and flushed before its checkpoint, so a killed run
never lacks one; a resumed run opens a new event file with ``purge_step`` = the first epoch it
runs, and TensorBoard's reader drops anything an earlier process wrote from that epoch on (an
epoch whose events were flushed but whose checkpoint was not). Logging is best effort: without
tensorboard, or on a write error, a warning is logged and training goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# history.json key -> TensorBoard tag.
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_accuracy": "accuracy/val",
    "val_balanced_accuracy": "balanced_accuracy/val",
    "val_robust_loss": "loss/val_robust",  # adversarial training only: PGD on the validation split
    "val_robust_accuracy": "accuracy/val_robust",
    "lr": "lr",
    "train_images_per_s": "throughput/train_images_per_s",
}

_warned_missing = False


def _summary_writer() -> Any:
    """torch's SummaryWriter class, or None (warned once per process) where tensorboard is missing."""
    global _warned_missing
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        if not _warned_missing:
            _warned_missing = True
            log.warning("TensorBoard events are not written (%s); install tensorboard to get them", exc)
        return None
    return SummaryWriter


class EpochEvents:
    """Writes each epoch's history record as scalars; opens its event file at the first epoch."""

    def __init__(self, folder: Path, first_epoch: int) -> None:
        self.folder = folder
        self.first_epoch = first_epoch  # 1-based: the checkpoint's epoch + 1
        self._writer: Any = None
        self._off = False

    def write(self, record: dict[str, Any]) -> None:
        """Add one epoch's scalars (step: its epoch) and flush; never raises."""
        if self._off:
            return
        try:
            if self._writer is None:
                cls = _summary_writer()
                if cls is None:
                    self._off = True
                    return
                self._writer = cls(str(self.folder), purge_step=self.first_epoch)
            step = int(record["epoch"])
            for key, tag in TAGS.items():
                value = record.get(key)
                if value is not None:  # a NaN loss is written too: it shows where a run diverged
                    self._writer.add_scalar(tag, float(value), step)
            self._writer.flush()
        except Exception as exc:  # a full disk or a bad file must not stop training
            log.warning("%s: TensorBoard events stopped after an error: %s", self.folder, exc)
            self._off = True
            self.close()

    def close(self) -> None:
        """Flush and close the event file, if one was opened; never raises."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            writer.close()
        except Exception as exc:
            log.warning("%s: closing the TensorBoard event file failed: %s", self.folder, exc)
