"""Training and clean evaluation: ``python -m medhpc.train CONFIG``.

``train(cfg)`` is the job function the sweep runs: resumable, skipped when finished.
"""

from medhpc.train.config import PRESETS, DataConfig, OptimConfig, TrainConfig, from_mapping, load_train_config
from medhpc.train.loop import run_dir, train

__all__ = [
    "PRESETS",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "from_mapping",
    "load_train_config",
    "run_dir",
    "train",
]
