"""Backbones (ResNet50, InceptionV3, ViT-B/16) with linear, VIB and soft-attention heads.

Every model takes images in [0, 1] and normalises inside, so attacks work in pixel space.
Each architecture and head declares its facts in a spec (:class:`ArchSpec`,
:class:`HeadSpec`), listed in :mod:`medhpc.models.registry`; the rest of medhpc reads those.
"""

from medhpc.models.checkpoint import CheckpointError, load_model
from medhpc.models.classifier import Classifier, InputError, TrainOutput, build_model
from medhpc.models.config import AttentionConfig, ModelConfig, VIBConfig
from medhpc.models.heads import HeadOutput, LinearHead, SoftAttentionHead, VIBHead
from medhpc.models.noise import NoiseSource, fixed_noise, is_stochastic, noise_sources
from medhpc.models.registry import ARCHS, HEADS, base_head, get_arch, get_head
from medhpc.models.spec import ArchSpec, HeadSpec, SweepAxis
from medhpc.models.weights import WeightsError

__all__ = [
    "ARCHS",
    "HEADS",
    "ArchSpec",
    "AttentionConfig",
    "CheckpointError",
    "Classifier",
    "HeadOutput",
    "HeadSpec",
    "InputError",
    "LinearHead",
    "ModelConfig",
    "NoiseSource",
    "SoftAttentionHead",
    "SweepAxis",
    "TrainOutput",
    "VIBConfig",
    "VIBHead",
    "WeightsError",
    "base_head",
    "build_model",
    "fixed_noise",
    "get_arch",
    "get_head",
    "is_stochastic",
    "load_model",
    "noise_sources",
]
