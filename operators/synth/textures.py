"""Deterministic textures: smooth noise, per-class palettes, polygon painting.

Textures exist so that appearance descriptors and optical flow have something to lock
onto. They are band-limited (Gaussian-blurred noise) on purpose: the GT flow is exact for
the rendered motion, and a band-limited texture is what lets bilinear resampling of frame
t−1 along that flow reproduce frame t to within a few grey levels.
"""
from __future__ import annotations

import cv2
import numpy as np

# Per-class colour variants (RGB). Things get a variant chosen per instance, so two cars
# differ in colour unless the "similar" scenario forces one appearance per class.
THING_PALETTES: dict[str, list[tuple[int, int, int]]] = {
    "person": [(190, 60, 60), (60, 90, 170), (70, 140, 80), (200, 170, 60), (120, 70, 140), (40, 40, 40)],
    "rider": [(230, 110, 30), (40, 120, 200), (200, 200, 40), (150, 40, 40)],
    "car": [(180, 30, 30), (30, 60, 160), (220, 220, 225), (35, 35, 40), (150, 155, 160), (40, 110, 60),
            (200, 140, 30)],
    "truck": [(230, 230, 230), (200, 80, 30), (60, 80, 120)],
    "bus": [(220, 190, 40), (40, 100, 180), (180, 40, 40)],
    "train": [(200, 200, 210), (210, 60, 50)],
    "motorcycle": [(20, 20, 20), (170, 20, 20), (30, 60, 170)],
    "bicycle": [(20, 120, 180), (200, 30, 30), (40, 40, 40), (230, 230, 230)],
}
SKIN = (224, 172, 140)
TYRE = (25, 25, 28)
GLASS = (60, 80, 100)


def smooth_noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """``(height, width) float32`` zero-mean, unit-std noise blurred with a Gaussian of ``sigma`` px."""
    if sigma > 8.0:  # wide blur: blur a coarser grid and upsample (same spectrum, far cheaper)
        step = sigma / 4.0
        small = smooth_noise(rng, int(np.ceil(height / step)) + 2, int(np.ceil(width / step)) + 2, 4.0)
        white = cv2.resize(small, None, fx=step, fy=step, interpolation=cv2.INTER_LINEAR)[:height, :width]
        white = np.ascontiguousarray(white)
    else:
        white = rng.standard_normal((height, width), dtype=np.float32)
        if sigma > 0.3:
            white = cv2.GaussianBlur(white, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
    std = float(white.std()) or 1.0
    return (white - float(white.mean())) / std


def textured(colors: np.ndarray, rng: np.random.Generator, sigma: float, contrast: float = 0.22,
             grain: float = 10.0) -> np.ndarray:
    """Modulate a ``(h, w, 3)`` colour image with two octaves of smooth noise → ``(h, w, 3) uint8``.

    ``sigma`` is the fine octave's blur in canvas pixels (and the blur of the painted
    colours); the coarse octave is 4× wider.
    Brightness is modulated multiplicatively (shading) and additively (grain), so dark
    surfaces still carry texture.
    """
    h, w = colors.shape[:2]
    coarse = smooth_noise(rng, h, w, 4.0 * sigma)
    fine = smooth_noise(rng, h, w, sigma)
    shade = 1.0 + contrast * (0.6 * coarse + 0.4 * fine)
    # Painted edges (windows, lane marks) are band-limited like the noise: a hard edge
    # cannot be resampled bilinearly without error, a sigma-wide ramp can.
    base = cv2.GaussianBlur(colors.astype(np.float32), (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REPLICATE)
    out = base * shade[..., None] + grain * fine[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def fill_polygons(canvas: np.ndarray, polygons: list[np.ndarray], value) -> None:
    """Fill ``(N, 2)`` float polygons (x, y in pixels) into ``canvas`` in place, sub-pixel accurate."""
    shift = 4  # OpenCV fixed-point: 1/16 px vertex precision
    pts = [np.round(np.asarray(p, np.float64) * (1 << shift)).astype(np.int32) for p in polygons]
    color = value if isinstance(value, (tuple, list)) else (int(value),)
    cv2.fillPoly(canvas, pts, color, lineType=cv2.LINE_8, shift=shift)


def fill_ellipse(canvas: np.ndarray, center: tuple[float, float], axes: tuple[float, float], value,
                 angle: float = 0.0) -> None:
    """Fill an ellipse (centre and half-axes in pixels) into ``canvas`` in place."""
    shift = 4
    c = (int(round(center[0] * 16)), int(round(center[1] * 16)))
    a = (max(1, int(round(axes[0] * 16))), max(1, int(round(axes[1] * 16))))
    color = value if isinstance(value, (tuple, list)) else (int(value),)
    cv2.ellipse(canvas, c, a, angle, 0, 360, color, thickness=-1, lineType=cv2.LINE_8, shift=shift)


def jitter_color(rng: np.random.Generator, color: tuple[int, int, int], amount: float = 18.0) -> tuple[int, int, int]:
    """``color`` moved by a small random offset, so stuff regions of one class vary a little."""
    return tuple(int(np.clip(c + rng.uniform(-amount, amount), 0, 255)) for c in color)
