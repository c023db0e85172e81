"""Decode one image (or mask) file into a fixed-size array, or say why not.

All of medhpc's preprocessing of pixels lives here, so the cache and any
direct-decoding baseline resize identically: RGB (grayscale replicated),
``size x size``, Pillow bilinear with antialiasing; masks nearest-neighbour.
Partial files must fail loudly, so this module never enables
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` and always forces a full ``load()``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from medhpc.data.errors import BadImageError

log = logging.getLogger(__name__)

_warned_truncated = False


def _open_fully(path: Path) -> Image.Image:
    """Open and fully decode ``path``; any decoder failure becomes BadImageError."""
    global _warned_truncated
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated:
        _warned_truncated = True
        log.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True by other code: "
            "truncated images will not be detected"
        )
    try:
        with Image.open(path) as im:
            im.load()
            # Detach from the file so the handle closes here.
            return im.copy()
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BadImageError(path, reason.splitlines()[0]) from None


def _to_8bit(im: Image.Image) -> Image.Image:
    """Reduce 16/32-bit and float grayscale to 8-bit ``L`` by scaling, not clipping."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode != "F" and arr.max(initial=0) > 255 else 255.0
        if im.mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L")
    return im


def _rgb_array(im: Image.Image, size: int) -> np.ndarray:
    im = _to_8bit(im)
    if im.mode in ("LA", "La", "1"):
        im = im.convert("L")
    elif im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def load_image(path: Path | str, size: int) -> np.ndarray:
    """Return ``path`` as a ``(size, size, 3)`` uint8 RGB array.

    Grayscale images are resized as one channel and then replicated, which is
    three times cheaper than converting first and gives identical pixels.
    Non-square images are resized to a square (no crop, no padding).
    """
    return _rgb_array(_open_fully(Path(path)), size)


def load_sample(
    path: Path | str, mask_path: Path | str | None, size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load an image and, if given, its mask, checking that their sizes match."""
    im = _open_fully(Path(path))
    mask = None if mask_path is None else load_mask(mask_path, size, image_size=im.size)
    return _rgb_array(im, size), mask


def load_mask(path: Path | str, size: int, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Return a binary lesion mask as ``(size, size)`` uint8 in {0, 255}.

    Nearest-neighbour resizing keeps it binary. When ``image_size`` (width,
    height of the original image) is given, a mask of another size is rejected:
    it cannot belong to that image.
    """
    path = Path(path)
    im = _open_fully(path)
    if image_size is not None and im.size != tuple(image_size):
        raise BadImageError(
            path, f"mask is {im.size[0]}x{im.size[1]} but its image is {image_size[0]}x{image_size[1]}"
        )
    im = _to_8bit(im).convert("L")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.NEAREST)
    return np.where(np.asarray(im) > 127, 255, 0).astype(np.uint8)
