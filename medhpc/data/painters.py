"""Procedural fundus photographs and chest X-rays, for tests without real data.

The images imitate the look that matters to a classifier (anatomy, lesions,
acquisition variation) well enough that a small CNN learns the task clearly
above chance but not perfectly: lesion strength varies per image, so some
positives are hard, and anatomy, brightness and position vary, with
lesion-like confounders (light reflexes, soft-tissue shadows) in both classes,
so that global image statistics separate the classes much worse than a CNN. Each painter draws one image from a
caller-supplied ``numpy.random.Generator`` and returns the image with its
binary lesion mask, so the same generator state always gives the same pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Defaults chosen so that a 3-layer CNN trained on 350 images at 32-48 px
#: reaches about 0.8-0.9 balanced accuracy (tests/data/test_data_learnability.py).
FUNDUS_LESION_CONTRAST = 1.0
FUNDUS_LESIONS = 8
CXR_LESION_CONTRAST = 1.0
CXR_LESIONS = 3

#: Share of positives whose lesions are drawn faint (hard cases).
HARD_SHARE = 0.15


def lesion_strength(rng: np.random.Generator, contrast: float) -> float:
    """Per-image lesion strength: usually clear, faint for :data:`HARD_SHARE` of images.

    The faint minority keeps a classifier's accuracy below 100 % however long it
    trains, like subtle early disease in the real datasets.
    """
    if rng.random() < HARD_SHARE:
        return contrast * rng.uniform(0.1, 0.35)
    return contrast * rng.uniform(0.6, 1.0)


def _blob(
    shape: tuple[int, int], cy: float, cx: float, radius: float, soft: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """A soft-edged disc clipped to ``shape``: (window, alpha in [0,1], core mask).

    The core (distance <= radius, at least the nearest pixel) is what the lesion
    mask records; the soft rim only shades.
    """
    h, w = shape
    reach = radius + 2 * soft + 1
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5  # pixel centres, as in _grid
    dist = np.hypot(yy - cy, xx - cx)
    alpha = np.clip((radius - dist) / soft + 0.5, 0.0, 1.0)
    core = dist <= max(radius, 0.71)
    return (slice(y0, y1), slice(x0, x1)), alpha, core


def _low_freq_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    grid = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    up = Image.fromarray(grid, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32) / 127.5 - 1.0


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy + 0.5, xx + 0.5


def _vessel_tree(rng: np.random.Generator, size: int, cy: float, cx: float, radius: float,
                 start: tuple[float, float], temporal: float) -> np.ndarray:
    """Branching vessel layer in [0, 1], grown as random walks from the optic disc.

    The four main arcades leave the disc up and down and curve towards the
    macula (``temporal`` is +1 or -1: the side the macula lies on).
    """
    scale = 2  # draw at 2x and downsample, for thin antialiased vessels
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    step = 0.07 * radius * scale
    base_width = max(1.0, 0.03 * radius * scale)
    stack: list[tuple[float, float, float, float, int]] = []
    for vertical in (-1.0, 1.0):
        for spread in (0.35, 1.1):
            # Angle measured from +x; temporal arcades start steep, nasal ones flat.
            angle = math.atan2(vertical * (1.2 - spread * 0.5), temporal * spread)
            angle += rng.normal(0, 0.12)
            width = base_width * (1.0 if spread < 1 else 0.75)
            stack.append((start[0] * scale, start[1] * scale, angle, width, 0))
    bend_to = 1.0 if temporal > 0 else -1.0
    while stack:
        y, x, angle, width, depth = stack.pop()
        for _ in range(30):
            ny, nx = y + step * math.sin(angle), x + step * math.cos(angle)
            draw.line([(x, y), (nx, ny)], fill=255, width=max(1, round(width)))
            y, x = ny, nx
            if math.hypot(y / scale - cy, x / scale - cx) > radius * 0.98:
                break
            # Arcades bend back towards the horizontal meridian on the temporal side.
            target = 0.0 if bend_to > 0 else math.pi
            diff = math.atan2(math.sin(target - angle), math.cos(target - angle))
            angle += 0.06 * diff + rng.normal(0, 0.18)
            if depth < 3 and rng.random() < 0.15:
                side = 1.0 if rng.random() < 0.5 else -1.0
                stack.append((y, x, angle + side * rng.uniform(0.4, 0.9), width * 0.7, depth + 1))
                width *= 0.85
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


# Relative lesion load per DR grade: (microaneurysms, haemorrhages, exudates).
_GRADE_LOAD = {
    0: (0.0, 0.0, 0.0),
    1: (0.8, 0.0, 0.0),
    2: (1.0, 0.3, 0.5),
    3: (1.4, 0.8, 0.8),
    4: (1.6, 1.0, 1.0),
}


def paint_fundus(
    rng: np.random.Generator,
    size: int,
    grade: int,
    lesion_contrast: float = FUNDUS_LESION_CONTRAST,
    lesions: int = FUNDUS_LESIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint an RGB fundus photograph of DR grade ``grade`` (0 = healthy).

    Returns ``(image uint8 (size, size, 3), mask bool (size, size))``. Positives
    get red dots (microaneurysms), red blots (haemorrhages) and yellow exudates;
    their number scales with ``lesions`` and the grade, and their strength with
    ``lesion_contrast`` times a per-image factor (:func:`lesion_strength`), so
    some are faint.
    """
    yy, xx = _grid(size)
    cy = size / 2 + rng.normal(0, 0.02 * size)
    cx = size / 2 + rng.normal(0, 0.02 * size)
    radius = 0.46 * size * rng.uniform(0.92, 1.03)
    r = np.hypot(yy - cy, xx - cx) / radius
    inside = np.clip((1.0 - r) * radius + 0.5, 0.0, 1.0)  # 1-pixel antialiased rim

    brightness = rng.uniform(0.75, 1.15)
    colour = np.array([0.80, 0.36, 0.14], np.float32) * brightness
    colour *= rng.uniform(0.9, 1.1, 3).astype(np.float32)
    tilt = rng.normal(0, 0.08, 2)
    illumination = (1.0 - rng.uniform(0.35, 0.6) * r**2) * (
        1.0 + tilt[0] * (yy - cy) / radius + tilt[1] * (xx - cx) / radius
    )
    texture = 1.0 + 0.06 * _low_freq_noise(rng, size, 7)
    rgb = colour[None, None, :] * (illumination * texture)[:, :, None]

    # Optic disc on the nasal side; the macula (darker) on the temporal side.
    temporal = 1.0 if rng.random() < 0.5 else -1.0
    od_y = cy + rng.normal(0, 0.06 * radius)
    od_x = cx - temporal * radius * rng.uniform(0.33, 0.45)
    od_r = 0.13 * radius * rng.uniform(0.85, 1.15)
    od = np.exp(-((np.hypot(yy - od_y, xx - od_x) / od_r) ** 4))
    rgb += od[:, :, None] * np.array([0.35, 0.33, 0.2], np.float32) * rng.uniform(0.7, 1.1)
    mac_x = cx + temporal * radius * rng.uniform(0.05, 0.15)
    macula = np.exp(-((np.hypot(yy - cy, xx - mac_x) / (0.18 * radius)) ** 2))
    rgb *= (1.0 - 0.25 * macula)[:, :, None]

    vessels = _vessel_tree(rng, size, cy, cx, radius, (od_y, od_x), temporal)
    rgb *= 1.0 - vessels[:, :, None] * np.array([0.3, 0.5, 0.45], np.float32)

    # Light reflexes, in either class: pale spots that a bright-pixel
    # statistic confuses with exudates.
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 5))):
            rad = np.sqrt(rng.uniform(0, 0.75**2)) * radius
            theta = rng.uniform(0, 2 * np.pi)
            lr = max(0.6, rng.uniform(0.015, 0.04) * radius)
            window, alpha, _ = _blob((size, size), cy + rad * np.sin(theta), cx + rad * np.cos(theta), lr,
                                     soft=max(0.8, 0.5 * lr))
            a = (rng.uniform(0.2, 0.6) * alpha)[:, :, None]
            rgb[window] = rgb[window] * (1 - a) + np.array([1.0, 0.92, 0.78], np.float32) * a

    mask = np.zeros((size, size), dtype=bool)
    if grade > 0:
        strength = lesion_strength(rng, lesion_contrast)
        load = _GRADE_LOAD[min(grade, 4)]
        counts = [rng.poisson(lesions * f) if f else 0 for f in load]
        counts[0] = max(counts[0], 1)  # every positive has at least one lesion
        red = np.array([0.42, 0.05, 0.04], np.float32) * brightness
        yellow = np.array([1.0, 0.86, 0.35], np.float32)
        kinds = [(red, 0.015, 0.03)] * counts[0] + [(red, 0.035, 0.07)] * counts[1] + [
            (yellow, 0.015, 0.04)
        ] * counts[2]
        for lesion_colour, r_lo, r_hi in kinds:
            # Anywhere on the retina except the optic disc.
            for _ in range(20):
                rad = np.sqrt(rng.uniform(0, 0.8**2)) * radius
                theta = rng.uniform(0, 2 * np.pi)
                ly, lx = cy + rad * np.sin(theta), cx + rad * np.cos(theta)
                if math.hypot(ly - od_y, lx - od_x) > 1.6 * od_r:
                    break
            lr = max(0.6, rng.uniform(r_lo, r_hi) * radius)
            window, alpha, core = _blob((size, size), ly, lx, lr, soft=max(0.6, 0.3 * lr))
            a = (min(1.0, strength * rng.uniform(0.7, 1.0)) * alpha)[:, :, None]
            rgb[window] = rgb[window] * (1 - a) + lesion_colour * a
            mask[window] |= core

    rgb *= inside[:, :, None]
    rgb += rng.normal(0, 0.015, rgb.shape).astype(np.float32)
    image = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, mask & (inside > 0.5)


def _soft_ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float,
                  angle: float, edge: float) -> np.ndarray:
    """Ellipse indicator in [0, 1] with a smooth edge ``edge`` pixels wide."""
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    d = (np.sqrt(u * u + v * v) - 1.0) * min(rx, ry)
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def paint_cxr(
    rng: np.random.Generator,
    size: int,
    positive: bool,
    lesion_contrast: float = CXR_LESION_CONTRAST,
    lesions: int = CXR_LESIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a grayscale frontal chest X-ray; positives have pneumonia opacities.

    Returns ``(image uint8 (size, size), mask bool (size, size))``. Opacities are
    soft blurry patches inside the lungs, 1 to ``lesions`` of them; at strength 1
    (``lesion_contrast`` times the per-image factor of :func:`lesion_strength`) a
    patch is as dense as soft tissue.
    """
    yy, xx = _grid(size)
    s = float(size)
    mid = s * (0.5 + rng.normal(0, 0.015))
    top = s * rng.normal(0.0, 0.015)
    edge = max(1.0, 0.025 * s)

    body = _soft_ellipse(yy, xx, 0.62 * s + top, mid, 0.6 * s, 0.47 * s * rng.uniform(0.92, 1.05),
                         0.0, 3 * edge)
    neck = _soft_ellipse(yy, xx, 0.05 * s + top, mid, 0.2 * s, 0.1 * s, 0.0, 2 * edge)
    tissue = np.maximum(body, neck) * rng.uniform(0.55, 0.75)
    img = 0.04 + tissue * (1.0 + 0.08 * _low_freq_noise(rng, size, 5))

    lung = np.zeros_like(yy)
    half_gap = 0.19 * s * rng.uniform(0.92, 1.08)
    for side in (-1.0, 1.0):
        ly = 0.47 * s + top + rng.normal(0, 0.015 * s)
        lx = mid + side * half_gap
        ry = 0.27 * s * rng.uniform(0.9, 1.08)
        rx = 0.135 * s * rng.uniform(0.9, 1.1) * (1.06 if side < 0 else 1.0)
        lung = np.maximum(lung, _soft_ellipse(yy, xx, ly, lx, ry, rx, side * rng.normal(0.1, 0.04), edge))
    heart = _soft_ellipse(yy, xx, 0.66 * s + top, mid + 0.07 * s, 0.13 * s * rng.uniform(0.85, 1.15),
                          0.16 * s * rng.uniform(0.85, 1.15), -0.25, 2 * edge)
    lung = lung * (1.0 - 0.8 * heart)
    depth = rng.uniform(0.55, 0.7)
    img = img * (1.0 - depth * lung)

    # Spine and mediastinum down the middle; ribs as arcs over the lungs.
    spine = np.clip(1.0 - np.abs(xx - mid) / (0.05 * s), 0.0, 1.0) * body
    img += 0.12 * spine
    ribs = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(ribs)
    width = max(1, round(0.012 * s))
    for k in range(9):
        y = (0.17 + 0.065 * k) * s + top + rng.normal(0, 0.005 * s)
        for side in (-1.0, 1.0):
            # Each rib leaves the spine, rises slightly and falls laterally.
            x0, x1 = sorted((mid - side * 0.1 * s, mid + side * 0.42 * s))
            draw.arc([x0, y - 0.05 * s, x1, y + 0.2 * s], 200, 340, fill=255, width=width)
    ribs = ribs.filter(ImageFilter.GaussianBlur(max(0.5, 0.006 * s)))
    img += 0.07 * rng.uniform(0.6, 1.2) * (np.asarray(ribs, np.float32) / 255.0) * body
    # Vascular markings inside the lungs.
    img += 0.04 * lung * _low_freq_noise(rng, size, 12)

    # Breast or soft-tissue shadows over the lower lungs, in either class: a
    # confounder that looks like a faint, diffuse opacity.
    if rng.random() < 0.4:
        shadow = _soft_ellipse(yy, xx, 0.8 * s + top, mid, 0.16 * s, 0.42 * s, 0.0, 6 * edge)
        img += rng.uniform(0.03, 0.08) * shadow * lung

    mask = np.zeros((size, size), dtype=bool)
    if positive:
        strength = lesion_strength(rng, lesion_contrast)
        cand = np.argwhere(lung >= min(0.9, float(lung.max())))  # tiny images: the darkest spot
        for _ in range(int(rng.integers(1, max(1, lesions) + 1))):
            cy, cx = cand[rng.integers(len(cand))] + 0.5
            sig_y = s * rng.uniform(0.06, 0.12)
            sig_x = sig_y * rng.uniform(0.6, 1.4)
            q = ((yy - cy) / sig_y) ** 2 + ((xx - cx) / sig_x) ** 2
            g = np.exp(-0.5 * q * q)  # flat-topped: a consolidated patch, not a point
            amp = strength * rng.uniform(0.7, 1.0)
            img += amp * depth * tissue * g * lung
            mask |= (g > 0.5) & (lung > 0.5)

    gain, gamma = rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.2)
    img = np.clip(img * gain, 0.0, 1.0) ** gamma
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, mask
