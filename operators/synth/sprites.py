"""Thing sprites: stylised silhouettes of the 8 Cityscapes thing classes, built from parts.

A sprite is drawn in *metres* (x right, y down, origin where the object touches the
ground) and rasterised once per instance at a resolution chosen for the largest size it
will have on screen. Limbs are separate parts with a pivot, so a walking person deforms
non-rigidly while each part still moves by one affine map per frame (which keeps the GT
flow exact).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.synth.textures import GLASS, SKIN, THING_PALETTES, TYRE, fill_polygons, textured

Polygon = np.ndarray  # (N, 2) float, metres or pixels


@dataclass
class PartSpec:
    """One rigid piece of a sprite: filled shapes (each a list of polygons, even-odd holes)
    with colours, rotating about ``pivot`` by ``swing`` × the instance's limb angle."""

    shapes: list[tuple[list[Polygon], tuple[int, int, int]]]
    pivot: tuple[float, float] = (0.0, 0.0)
    swing: float = 0.0


@dataclass
class PartCanvas:
    """A rasterised part: ``texture (h, w, 3) uint8``, ``mask (h, w) uint8`` (1 = object),
    and the part's pivot in canvas pixels."""

    texture: np.ndarray
    mask: np.ndarray
    pivot_px: tuple[float, float]


@dataclass
class Sprite:
    """All parts of one instance on canvases sharing one pixel frame: canvas pixel
    ``origin_px + ppm · p`` shows the point ``p`` (metres)."""

    parts: list[PartCanvas]
    ppm: float
    origin_px: tuple[float, float]


def rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> Polygon:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def bar(p: tuple[float, float], q: tuple[float, float], width: float) -> Polygon:
    """A straight bar of ``width`` from ``p`` to ``q`` (bicycle frames, limbs)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = q - p
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) or 1.0) * width / 2
    return np.array([p + n, q + n, q - n, p - n])


def _darker(color, k=0.55):
    return tuple(int(c * k) for c in color)


def _person(rng, palette, seated: bool = False) -> list[PartSpec]:
    h = rng.uniform(1.6, 1.9) if not seated else rng.uniform(1.55, 1.75)
    shirt = palette[rng.integers(len(palette))]
    trousers = _darker(palette[rng.integers(len(palette))], 0.5)
    hip_y = -0.48 * h if not seated else -0.95
    top = hip_y - 0.52 * h
    shoulder = (0.0 if not seated else 0.12, top + 0.2 * h)
    head = ellipse(shoulder[0] + (0.05 if seated else 0), top + 0.07 * h, 0.065 * h, 0.075 * h)
    torso = np.array([[shoulder[0] - 0.12 * h, shoulder[1] - 0.02], [shoulder[0] + 0.12 * h, shoulder[1] - 0.02],
                      [0.08 * h, hip_y], [-0.08 * h, hip_y]])
    leg_len = -hip_y if not seated else 0.85
    foot = (0.0, hip_y + leg_len) if not seated else (0.05, -0.12)

    def leg():
        return PartSpec([([bar((0.0, hip_y), foot, 0.085 * h)], trousers)], pivot=(0.0, hip_y), swing=1.0)

    def arm(sign):
        hand = (shoulder[0] + (0.25 if seated else 0.0), shoulder[1] + 0.36 * h)
        return PartSpec([([bar(shoulder, hand, 0.055 * h)], shirt)], pivot=shoulder, swing=-0.8 * sign)

    body = PartSpec([([torso], shirt), ([head], SKIN)])
    back_leg, front_leg = leg(), leg()
    front_leg.swing = -1.0
    return [arm(-1), back_leg, body, front_leg, arm(1)]


def _bicycle(rng, palette, motor: bool = False) -> list[PartSpec]:
    color = palette[rng.integers(len(palette))]
    r = 0.34 if not motor else 0.31
    base = 0.53 if not motor else 0.72
    wheels = [ellipse(x, -r, r, r, 24) for x in (-base, base)]
    hubs = [ellipse(x, -r, r - 0.05, r - 0.05, 24) for x in (-base, base)]
    shapes = []
    if motor:
        shapes.append((wheels, TYRE))
        shapes.append(([np.array([[-base, -0.55], [-0.2, -0.85], [0.45, -0.85], [base + 0.1, -0.6],
                                  [0.3, -0.35], [-0.4, -0.35]])], color))
    else:
        for w, hub in zip(wheels, hubs):
            shapes.append(([w, hub], TYRE))  # a ring: even-odd fill leaves the hub open
        frame = [bar((-base, -r), (-0.05, -0.82), 0.05), bar((-0.05, -0.82), (0.42, -0.78), 0.05),
                 bar((-base, -r), (0.0, -r), 0.05), bar((0.0, -r), (-0.05, -0.82), 0.05),
                 bar((0.0, -r), (0.42, -0.78), 0.05), bar((0.42, -0.78), (base, -r), 0.05),
                 bar((0.42, -0.78), (0.38, -0.98), 0.05), rect(-0.15, -0.88, 0.05, -0.82)]
        shapes.append((frame, color))
    return [PartSpec(shapes)]


def _car(rng, palette, view: str) -> list[PartSpec]:
    color = palette[rng.integers(len(palette))]
    if view == "rear":
        w = rng.uniform(1.7, 1.95)
        body = rect(-w / 2, -1.0, w / 2, -0.28)
        cabin = np.array([[-0.45 * w, -1.0], [-0.36 * w, -1.45], [0.36 * w, -1.45], [0.45 * w, -1.0]])
        window = np.array([[-0.38 * w, -1.03], [-0.31 * w, -1.38], [0.31 * w, -1.38], [0.38 * w, -1.03]])
        tyres = [rect(-w / 2, -0.32, -w / 2 + 0.3, 0.0), rect(w / 2 - 0.3, -0.32, w / 2, 0.0)]
        lights = [rect(-w / 2 + 0.05, -0.9, -w / 2 + 0.35, -0.75), rect(w / 2 - 0.35, -0.9, w / 2 - 0.05, -0.75)]
        return [PartSpec([([body, cabin], color), ([window], GLASS), (tyres, TYRE), (lights, (210, 30, 30))])]
    length = rng.uniform(3.8, 4.7)
    half = length / 2
    body = np.array([[-half, -0.3], [-half, -0.9], [-0.3 * length, -1.0], [0.35 * length, -1.0], [half, -0.8],
                     [half, -0.3]])
    cabin = np.array([[-0.27 * length, -0.98], [-0.14 * length, -1.45], [0.14 * length, -1.45], [0.3 * length, -0.98]])
    windows = [np.array([[-0.23 * length, -1.0], [-0.12 * length, -1.38], [-0.01 * length, -1.38], [-0.01 * length, -1.0]]),
               np.array([[0.02 * length, -1.0], [0.02 * length, -1.38], [0.13 * length, -1.38], [0.25 * length, -1.0]])]
    tyres = [ellipse(x * length, -0.32, 0.32, 0.32) for x in (-0.3, 0.3)]
    return [PartSpec([([body, cabin], color), (windows, GLASS), (tyres, TYRE)])]


def _box_vehicle(rng, palette, view: str, length: float, height: float, windows_row: bool) -> list[PartSpec]:
    color = palette[rng.integers(len(palette))]
    if view == "rear":
        w = 2.5
        box = rect(-w / 2, -height, w / 2, -0.35)
        tyres = [rect(-w / 2 + 0.05, -0.45, -w / 2 + 0.45, 0.0), rect(w / 2 - 0.45, -0.45, w / 2 - 0.05, 0.0)]
        glass = [rect(-w / 2 + 0.2, -height + 0.25, w / 2 - 0.2, -height + 1.0)] if windows_row else []
        return [PartSpec([([box], color), (glass, GLASS), (tyres, TYRE)] if glass else
                         [([box], color), (tyres, TYRE)])]
    half = length / 2
    box = rect(-half, -height, half, -0.4)
    tyres = [ellipse(x, -0.45, 0.45, 0.45) for x in (-half + 1.2, half - 1.4)]
    shapes = [([box], color), (tyres, TYRE)]
    if windows_row:
        n = max(3, int(length / 1.6))
        xs = np.linspace(-half + 0.4, half - 0.4, n + 1)
        shapes.append(([rect(a + 0.1, -height + 0.35, b - 0.1, -height + 1.3) for a, b in zip(xs[:-1], xs[1:])], GLASS))
    else:  # a truck: cab in front of the box
        shapes.append(([rect(half - 1.9, -height + 0.9, half - 0.2, -height + 1.6)], GLASS))
    return [PartSpec(shapes)]


def thing_parts(name: str, view: str, rng: np.random.Generator) -> list[PartSpec]:
    """The parts of a ``name`` ("person", "car", …) seen from ``view`` ("rear" or "side")."""
    palette = THING_PALETTES[name]
    if name == "person":
        return _person(rng, palette)
    if name == "rider":
        return _person(rng, palette, seated=True)
    if name == "bicycle":
        return _bicycle(rng, palette)
    if name == "motorcycle":
        return _bicycle(rng, palette, motor=True)
    if name == "car":
        return _car(rng, palette, view)
    if name == "truck":
        return _box_vehicle(rng, palette, view, rng.uniform(6.5, 8.5), rng.uniform(3.0, 3.6), False)
    if name == "bus":
        return _box_vehicle(rng, palette, view, rng.uniform(10.0, 12.0), 3.2, True)
    if name == "train":
        return _box_vehicle(rng, palette, "side", rng.uniform(18.0, 24.0), 3.5, True)
    raise ValueError(f"no sprite for class {name!r}")


def crowd_parts(rng: np.random.Generator, people: int) -> list[PartSpec]:
    """A group of ``people`` overlapping persons flattened into one rigid part (a crowd)."""
    shapes = []
    for k in range(people):
        dx = (k - (people - 1) / 2) * rng.uniform(0.3, 0.45)
        for part in _person(rng, THING_PALETTES["person"]):
            for polys, color in part.shapes:
                shapes.append(([p + np.array([dx, 0.0]) for p in polys], color))
    return [PartSpec(shapes)]


def extent(parts: list[PartSpec]) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) in metres of the rest pose."""
    pts = np.concatenate([p for part in parts for polys, _ in part.shapes for p in polys])
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def rasterise(parts: list[PartSpec], ppm: float, texture_sigma: float, rng: np.random.Generator,
              mirror: bool = False) -> Sprite:
    """Draw ``parts`` at ``ppm`` pixels per metre; ``mirror`` flips x (a thing moving left)."""
    if mirror:
        parts = [PartSpec([([p * np.array([-1.0, 1.0]) for p in polys], c) for polys, c in part.shapes],
                          (-part.pivot[0], part.pivot[1]), part.swing) for part in parts]
    xmin, ymin, xmax, ymax = extent(parts)
    pad = 3
    width = int(np.ceil((xmax - xmin) * ppm)) + 2 * pad + 1
    height = int(np.ceil((ymax - ymin) * ppm)) + 2 * pad + 1
    origin = (pad - xmin * ppm, pad - ymin * ppm)

    def to_px(p: Polygon) -> Polygon:
        return p * ppm + np.array(origin)

    canvases = []
    for part in parts:
        colors = np.empty((height, width, 3), np.uint8)
        colors[:] = part.shapes[0][1]  # the main colour also outside the mask: clean bilinear edges
        mask = np.zeros((height, width), np.uint8)
        for polys, color in part.shapes:
            px = [to_px(p) for p in polys]
            fill_polygons(colors, px, color)
            fill_polygons(mask, px, 1)
        texture = textured(colors, rng, texture_sigma)
        pivot = (origin[0] + part.pivot[0] * ppm, origin[1] + part.pivot[1] * ppm)
        canvases.append(PartCanvas(texture, mask, pivot))
    return Sprite(canvases, ppm, origin)
