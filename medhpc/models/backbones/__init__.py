"""Backbones as trunks: normalised images -> last feature map, one module per architecture.

Module names stay torchvision's (``layer4``, ``Mixed_7c``, ``AuxLogits``) so ImageNet state
dicts load unchanged and Grad-CAM can name its layer as the papers do. Each module declares
its :class:`~medhpc.models.spec.ArchSpec` as ``SPEC``; :mod:`medhpc.models.registry` lists them.
"""
