"""The stuff of a driving scene: a street drawn in perspective, the sky, the ego-vehicle hood.

The street (road, lane marks, sidewalks, terrain, building blocks with windows, wall,
fence, trees, poles with signs and a traffic light, unlabelled clutter) is laid out in
metres and projected once onto a backdrop canvas a little larger than the frame; the
camera's forward motion and sway then move the canvas by one affine map per frame.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from operators.synth.layers import Body, Camera, Layer
from operators.synth.textures import fill_ellipse, fill_polygons, jitter_color, smooth_noise, textured

STUFF_COLORS = {  # category id → base RGB of its texture
    0: (105, 100, 108), 1: (185, 160, 170), 2: (150, 140, 125), 3: (165, 150, 120), 4: (120, 105, 90),
    5: (120, 120, 125), 6: (40, 40, 40), 7: (215, 195, 40), 8: (70, 120, 45), 9: (150, 165, 95),
}
BUILDING_COLORS = [(150, 140, 125), (175, 120, 95), (190, 180, 160), (120, 120, 130), (160, 150, 170)]
VOID_LABEL = 1  # label 1 of the backdrop is VOID (unlabelled clutter); label 2 + c is stuff class c


def stuff_id(category_id: int) -> int:
    """Panoptic id of a stuff class: ``1000 · (category_id + 1)`` (instance number 0)."""
    return 1000 * (category_id + 1)


class _Painter:
    """Paints world quads onto the backdrop: labels and base colours together.

    Shapes painted inside ``with painter.standing(z):`` also make a free-standing object
    at depth ``z`` (a pole with its sign, a tree, clutter): it is cut out of the backdrop
    later so that it can hide a thing that stands behind it.
    """

    def __init__(self, camera: Camera, shape: tuple[int, int]):
        self.camera = camera
        self.labels = np.zeros(shape, np.uint8)
        self.colors = np.zeros(shape + (3,), np.uint8)
        self.standing_objects: list[tuple[float, list[tuple]]] = []  # (depth, shapes)
        self._current: list[tuple] | None = None

    @contextlib.contextmanager
    def standing(self, z: float) -> Iterator[None]:
        self._current = []
        yield
        self.standing_objects.append((z, self._current))
        self._current = None

    def quad(self, category: int | None, color, corners: list[tuple[float, float, float]], label: bool = True) -> None:
        """Fill the quad with world corners (x, up, z); ``category`` None = VOID; ``label``
        False paints colour only (lane marks, windows: texture on an existing region)."""
        xs, ups, zs = (np.array(v, float) for v in zip(*corners))
        poly = self.camera.project(xs, ups, zs)
        fill_polygons(self.colors, [poly], tuple(int(c) for c in color))
        if label:
            fill_polygons(self.labels, [poly], VOID_LABEL if category is None else 2 + category)
            if self._current is not None:
                self._current.append(("polygon", poly))

    def ground(self, category, color, x0, x1, z0, z1, label=True):
        self.quad(category, color, [(x0, 0, z0), (x1, 0, z0), (x1, 0, z1), (x0, 0, z1)], label)

    def facade(self, category, color, x, up0, up1, z0, z1, label=True):
        self.quad(category, color, [(x, up0, z0), (x, up0, z1), (x, up1, z1), (x, up1, z0)], label)

    def front(self, category, color, x0, x1, up0, up1, z, label=True):
        """A vertical rectangle facing the camera (poles, signs, tree trunks)."""
        self.quad(category, color, [(x0, up0, z), (x1, up0, z), (x1, up1, z), (x0, up1, z)], label)

    def disc(self, category, color, x, up, z, radius):
        center = self.camera.project(np.array(x), np.array(up), np.array(z))
        r = self.camera.focal * radius / z
        fill_ellipse(self.colors, tuple(center), (r, r), tuple(int(c) for c in color))
        fill_ellipse(self.labels, tuple(center), (r, r), 2 + category)
        if self._current is not None:
            self._current.append(("disc", center, r))

    def cutouts(self, texture: np.ndarray, poses: np.ndarray, ids: np.ndarray, ego_step: float) -> list[Body]:
        """The standing objects as bodies: their pixels of the finished backdrop (texture and
        labels), moving exactly like the backdrop, ordered among the things by their depth."""
        frames = len(poses)
        bodies = []
        for z, shapes in self.standing_objects:
            pts = np.concatenate([s[1] if s[0] == "polygon" else np.array([s[1] - s[2], s[1] + s[2]])
                                  for s in shapes])
            x0, y0 = np.maximum(np.floor(pts.min(axis=0)).astype(int) - 1, 0)
            x1, y1 = np.minimum(np.ceil(pts.max(axis=0)).astype(int) + 2, self.labels.shape[::-1])
            if x0 >= x1 or y0 >= y1:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            for shape in shapes:
                if shape[0] == "polygon":
                    fill_polygons(mask, [shape[1] - (x0, y0)], 1)
                else:
                    fill_ellipse(mask, tuple(shape[1] - (x0, y0)), (shape[2], shape[2]), 1)
            labels = np.where(mask > 0, self.labels[y0:y1, x0:x1], 0).astype(np.uint8)
            if not labels.any():
                continue
            crop_poses = poses.copy()  # canvas crop → frame: the backdrop pose after a shift by (x0, y0)
            crop_poses[:, :, 2] += crop_poses[:, :, :2] @ np.array([x0, y0], float)
            depth = z - ego_step * np.arange(frames)
            bodies.append(Body("standing", [Layer(texture[y0:y1, x0:x1].copy(), labels, crop_poses)], ids, depth,
                               np.ones(frames, bool)))
        return bodies


def backdrop(rng: np.random.Generator, camera: Camera, height: int, width: int, frames: int,
             void: bool) -> tuple[list[Body], tuple[float, float]]:
    """The street as bodies — the backdrop (behind every thing) and its standing objects
    (in depth order among the things) — and the road's extent (metres left and right of
    the camera) on which the things drive."""
    mx, my = camera.margin
    shape = (height + 2 * my, width + 2 * mx)
    p = _Painter(camera, shape)
    z_near = 0.7 * camera.focal * camera.height_m / (shape[0] - my - camera.horizon)
    z_far = 3000.0
    road_l, road_r = rng.uniform(5.0, 8.0), rng.uniform(3.0, 4.5)
    walk_l, walk_r = road_l + rng.uniform(2.0, 4.0), road_r + rng.uniform(2.0, 4.0)
    face_l, face_r = walk_l + rng.choice([0.0, rng.uniform(2, 5)]), walk_r + rng.choice([0.0, rng.uniform(2, 5)])

    p.ground(9, jitter_color(rng, STUFF_COLORS[9]), -400, 400, z_near, z_far)
    p.ground(1, jitter_color(rng, STUFF_COLORS[1]), -walk_l, -road_l, z_near, z_far)
    p.ground(1, jitter_color(rng, STUFF_COLORS[1]), road_r, walk_r, z_near, z_far)
    for z in np.arange(z_near, 120.0, 1.8):  # paving joints: texture that flow can follow
        p.ground(1, (150, 130, 140), -walk_l, -road_l, z, z + 0.12, label=False)
        p.ground(1, (150, 130, 140), road_r, walk_r, z, z + 0.12, label=False)
    p.ground(0, jitter_color(rng, STUFF_COLORS[0], 8), -road_l, road_r, z_near, z_far)
    for x in (-road_l + 0.3, road_r - 0.3):
        p.ground(0, (225, 225, 220), x - 0.08, x + 0.08, z_near, 400, label=False)
    for z in np.arange(z_near - rng.uniform(0, 9), 250.0, 9.0):
        p.ground(0, (235, 235, 230), -1.85, -1.65, max(z, z_near), z + 3.0, label=False)

    for side, x_face in ((-1, face_l), (1, face_r)):
        blocks = []
        z = z_near * 0.8
        while z < 400:
            length = rng.uniform(8, 30)
            if rng.random() < 0.2:  # an alley: the sky shows through
                z += rng.uniform(3, 10)
            blocks.append((z, z + length, rng.uniform(6, 24), BUILDING_COLORS[rng.integers(len(BUILDING_COLORS))]))
            z += length
        for z0, z1, h, color in reversed(blocks):  # far to near: nearer blocks paint over
            p.facade(2, jitter_color(rng, color), side * x_face, 0, h, z0, z1)
            glass = jitter_color(rng, (70, 85, 105), 12)
            for up in np.arange(1.2, h - 1.5, 3.2):
                for zw in np.arange(z0 + 0.8, z1 - 1.2, 3.0):
                    p.facade(2, glass, side * x_face, up, up + 1.5, zw, zw + 1.2, label=False)
        if x_face - (walk_l if side < 0 else walk_r) > 1.0:
            x_walk = walk_l if side < 0 else walk_r
            p.ground(9, jitter_color(rng, STUFF_COLORS[9]), min(side * x_walk, side * x_face),
                     max(side * x_walk, side * x_face), z_near, z_far)

    z0 = rng.uniform(8, 20)  # a wall on the right, a fence on the left
    p.facade(3, jitter_color(rng, STUFF_COLORS[3]), walk_r, 0, 1.1, z0, z0 + rng.uniform(8, 20))
    z0 = rng.uniform(10, 25)
    z1 = z0 + rng.uniform(8, 20)
    p.facade(4, jitter_color(rng, STUFF_COLORS[4]), -walk_l, 0, 1.3, z0, z1)
    for zf in np.arange(z0, z1, 0.6):
        p.facade(4, (80, 65, 55), -walk_l, 0, 1.3, zf, zf + 0.1, label=False)

    for _ in range(rng.integers(3, 7)):  # trees: trunk and crown are vegetation
        side = rng.choice([-1, 1])
        x = side * ((walk_l if side < 0 else walk_r) - rng.uniform(0.4, 1.2))
        z = rng.uniform(8, 120)
        color = jitter_color(rng, STUFF_COLORS[8], 25)
        with p.standing(z):
            p.front(8, (90, 70, 50), x - 0.15, x + 0.15, 0, 3.0, z)
            p.disc(8, color, x, rng.uniform(3.8, 5.0), z, rng.uniform(1.3, 2.2))

    poles = sorted(((rng.choice([-1, 1]), rng.uniform(6, 90)) for _ in range(rng.integers(3, 7))), key=lambda q: -q[1])
    for k, (side, z) in enumerate(poles):
        x = side * ((road_l if side < 0 else road_r) + 0.5)
        top = rng.uniform(4.5, 6.5)
        with p.standing(z):
            p.front(5, jitter_color(rng, STUFF_COLORS[5]), x - 0.09, x + 0.09, 0, top, z)
            if k == 0:
                p.front(6, STUFF_COLORS[6], x - 0.2, x + 0.2, top - 1.0, top, z)
                for j, lamp in enumerate([(220, 40, 30), (230, 180, 30), (40, 200, 70)]):
                    p.disc(6, lamp, x, top - 0.18 - 0.32 * j, z - 0.01, 0.1)
            elif rng.random() < 0.7:
                p.front(7, jitter_color(rng, STUFF_COLORS[7]), x - 0.35, x + 0.35, top - 1.6, top - 0.9, z)

    if void:
        for _ in range(2):  # unlabelled clutter on the sidewalks (VOID in the GT)
            side = rng.choice([-1, 1])
            x = side * ((road_l if side < 0 else road_r) + rng.uniform(0.8, 1.6))
            z = rng.uniform(7, 40)
            with p.standing(z):
                p.front(None, (90, 60, 110), x - 0.4, x + 0.4, 0, 0.9, z)

    texture = textured(p.colors, rng, sigma=1.4, contrast=0.18, grain=9.0)
    ids = np.array([0, 0] + [stuff_id(c) for c in range(10)], np.int32)
    poses = camera.backdrop_poses()
    street = Body("street", [Layer(texture, p.labels, poses)], ids, np.full(frames, 1e6), np.ones(frames, bool))
    return [street] + p.cutouts(texture, poses, ids, camera.ego_step), (road_l, road_r)


def sky(rng: np.random.Generator, camera: Camera, height: int, width: int, frames: int) -> Body:
    """The sky (category 10) behind everything: a gradient with clouds."""
    mx, my = camera.margin
    h, w = height + 2 * my, width + 2 * mx
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    top, low = np.array([70, 120, 190], np.float32), np.array([180, 200, 225], np.float32)
    colors = top + (low - top) * np.minimum(rows / max(1e-6, (camera.horizon + my) / h), 1.0)
    clouds = np.clip(smooth_noise(rng, h, w, max(4.0, w / 60)), 0, None)[..., None]
    colors = np.clip(colors + 45.0 * clouds, 0, 255) * np.ones((1, w, 1), np.float32)
    texture = textured(colors.astype(np.uint8), rng, sigma=1.5, contrast=0.05, grain=5.0)
    labels = np.ones((h, w), np.uint8)
    ids = np.array([0, stuff_id(10)], np.int32)
    return Body("sky", [Layer(texture, labels, camera.sky_poses())], ids, np.full(frames, 1e7), np.ones(frames, bool))


def hood(rng: np.random.Generator, height: int, width: int, frames: int) -> Body:
    """The ego-vehicle hood: static, VOID in the GT (as in Cityscapes), zero flow."""
    xs = np.linspace(0, width - 1, 64)
    rise = height * rng.uniform(0.07, 0.11) * (1 - ((xs - width / 2) / (0.8 * width)) ** 2)
    poly = np.concatenate([np.stack([xs, height - 1 - rise], 1), [[width + 1, height + 1], [-1, height + 1]]])
    labels = np.zeros((height, width), np.uint8)
    fill_polygons(labels, [poly], 1)
    colors = np.empty((height, width, 3), np.uint8)
    colors[:] = (45, 48, 55)
    texture = textured(colors, rng, sigma=2.0, contrast=0.1, grain=4.0)
    poses = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (frames, 1, 1))
    return Body("hood", [Layer(texture, labels, poses)], np.array([0, 0], np.int32), np.full(frames, -1.0),
                np.ones(frames, bool))
