"""ImageNet weights from a local file or the torchvision cache: never over the network.

Cluster nodes often have no internet, and a job that silently downloads 100 MB per array task
is worse. ``weights: imagenet`` therefore only looks where torchvision would have cached the
file (``$TORCH_HOME/hub/checkpoints``) and, when it is not there, says where to put it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from medhpc.errors import MedhpcError
from medhpc.models.registry import get_arch

log = logging.getLogger(__name__)

class WeightsError(MedhpcError):
    """Weights that are asked for but missing, unreadable or of the wrong architecture."""


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    """torchvision's ImageNet weights entry of ``arch`` (its spec's): URL, file name, metadata."""
    try:
        return get_arch(arch).imagenet()
    except ValueError:
        raise WeightsError(f"no ImageNet weights known for architecture {arch!r}") from None


def cached_path(arch: str) -> Path:
    """Where torchvision caches ``arch``'s ImageNet weights (whether or not the file is there)."""
    url = imagenet_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def resolve(arch: str, weights: str) -> Path | None:
    """The file to load for the ``weights`` setting, or None for random initialisation."""
    if weights == "none":
        return None
    if weights == "imagenet":
        path = cached_path(arch)
        if not path.is_file():
            url = imagenet_weights(arch).url
            raise WeightsError(
                f"ImageNet weights for {arch} are not in the torchvision cache: expected {path}. "
                f"medhpc never downloads at run time; fetch {url} on a machine with network "
                f"access and copy it there (or set TORCH_HOME), or give the file's path as weights"
            )
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file does not exist: {path} (use 'none', 'imagenet' or a path)")
    return path


def load_backbone(trunk: nn.Module, path: Path, arch: str) -> None:
    """Load a torchvision-format state dict into a trunk; its classifier layers (the spec's
    ``classifier`` prefixes: ``fc.``, ViT's ``heads.``) are skipped."""
    drop = get_arch(arch).classifier
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    own = trunk.state_dict()
    own_keys = {k for k in own if not k.startswith(drop)}
    missing = sorted(own_keys - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not hold {arch} weights: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    wrong = [k for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise WeightsError(f"{path}: shapes differ from {arch} for {wrong[:3]}")
    trunk.load_state_dict(state, strict=False)
    log.info("loaded %s backbone weights from %s", arch, path)
