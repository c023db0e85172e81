"""Backbones (ResNet50, InceptionV3) with linear, VIB and soft-attention heads.

Every model takes images in [0, 1] and normalises inside, so attacks work in pixel space.
"""

from medhpc.models.checkpoint import CheckpointError, load_model
from medhpc.models.classifier import Classifier, InputError, TrainOutput, build_model
from medhpc.models.config import AttentionConfig, ModelConfig, VIBConfig
from medhpc.models.heads import HeadOutput, LinearHead, SoftAttentionHead, VIBHead
from medhpc.models.noise import NoiseSource, fixed_noise, is_stochastic, noise_sources
from medhpc.models.weights import WeightsError

__all__ = [
    "AttentionConfig",
    "CheckpointError",
    "Classifier",
    "HeadOutput",
    "InputError",
    "LinearHead",
    "ModelConfig",
    "NoiseSource",
    "SoftAttentionHead",
    "TrainOutput",
    "VIBConfig",
    "VIBHead",
    "WeightsError",
    "build_model",
    "fixed_noise",
    "is_stochastic",
    "load_model",
    "noise_sources",
]
