"""Classification heads over a backbone's last feature map (B, C, H, W), one module per head.

Each head returns a :class:`HeadOutput`; each module declares its settings (if any) and its
:class:`~medhpc.models.spec.HeadSpec` as ``SPEC``; :mod:`medhpc.models.registry` lists them.
Only the VIB head is stochastic and has a KL term; the attention head exposes its maps for
Grad-CAM-style figures (:meth:`SoftAttentionHead.maps`).
"""

from medhpc.models.heads.attention import AttentionConfig, SoftAttentionHead
from medhpc.models.heads.linear import LinearHead
from medhpc.models.heads.output import HeadOutput
from medhpc.models.heads.vib import VIBConfig, VIBHead

__all__ = ["AttentionConfig", "HeadOutput", "LinearHead", "SoftAttentionHead", "VIBConfig", "VIBHead"]
