"""The scene model: textured layers placed in each frame by one affine map, and the camera.

Why layers with affine poses: the GT flow must be *exact* for the rendered motion. A
pixel x of frame t that shows layer L shows the canvas point ``P_t⁻¹ x``; in frame t−1
that canvas point was at ``P_{t−1} P_t⁻¹ x``. With every pose affine, that map is one
3×3 matrix per layer and frame, evaluated in closed form for every pixel — no estimation.
Perspective effects (things growing as they approach, the road expanding from the
vanishing point) are carried by how the poses change from frame to frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Layer:
    """One rigid textured piece.

    ``texture (h, w, 3) uint8``, ``labels (h, w) uint8`` (0 = transparent, k ≥ 1 → the
    body's ``ids[k]``), ``poses (T, 2, 3) float64`` mapping canvas pixels to frame pixels
    (OpenCV convention: integer coordinates are pixel centres).
    """

    texture: np.ndarray
    labels: np.ndarray
    poses: np.ndarray


@dataclass
class Body:
    """Layers drawn together at one depth: the stuff backdrop, one thing instance (its
    limbs are separate layers), the crowd, or the ego-vehicle hood.

    ``ids (K,) int32`` maps label k to a panoptic id (0 = VOID); ``depth (T,)`` orders the
    bodies of a frame (larger = farther, drawn first); ``visible (T,) bool``.
    ``instance_id`` is the panoptic id of a thing or crowd body, None for stuff and VOID.
    """

    name: str
    layers: list[Layer]
    ids: np.ndarray
    depth: np.ndarray
    visible: np.ndarray
    instance_id: int | None = None
    iscrowd: bool = False


@dataclass
class Scene:
    """Everything needed to render the frames of one video."""

    height: int
    width: int
    frames: int
    bodies: list[Body]
    category_of: dict[int, int] = field(default_factory=dict)  # panoptic id → category id
    iscrowd_of: dict[int, int] = field(default_factory=dict)


@dataclass
class Camera:
    """A pinhole camera driving forward with smooth yaw/pitch sway.

    ``focal`` in pixels; ``horizon`` / ``vp_x``: the vanishing point at rest; ``pan (T, 2)``
    the image shift from yaw and pitch; ``zoom (T,)`` the expansion of the backdrop about
    the vanishing point from forward motion (a plane at ``backdrop_depth`` metres);
    ``ego_step`` metres driven per frame; ``margin (mx, my)``: canvas border beyond the
    frame so that sway never uncovers the canvas edge.
    """

    focal: float
    horizon: float
    vp_x: float
    height_m: float
    pan: np.ndarray
    zoom: np.ndarray
    ego_step: float
    margin: tuple[int, int]

    def project(self, x_m: np.ndarray, up_m: np.ndarray, z_m: np.ndarray,
                t: int | np.ndarray | None = None) -> np.ndarray:
        """Image position ``(…, 2)`` of world points (lateral x, height above ground, depth),
        at frame ``t`` (with its sway) or, if ``t`` is None, on the backdrop canvas."""
        x = self.vp_x + self.focal * np.asarray(x_m, float) / z_m
        y = self.horizon + self.focal * (self.height_m - np.asarray(up_m, float)) / z_m
        if t is None:
            return np.stack([x + self.margin[0], y + self.margin[1]], axis=-1)
        return np.stack([x + self.pan[t, 0], y + self.pan[t, 1]], axis=-1)

    def backdrop_poses(self) -> np.ndarray:
        """``(T, 2, 3)`` canvas → frame for the stuff backdrop: zoom about the vanishing point, then sway."""
        s = self.zoom
        poses = np.zeros((len(s), 2, 3))
        poses[:, 0, 0] = s
        poses[:, 1, 1] = s
        poses[:, 0, 2] = self.vp_x + self.pan[:, 0] - s * (self.margin[0] + self.vp_x)
        poses[:, 1, 2] = self.horizon + self.pan[:, 1] - s * (self.margin[1] + self.horizon)
        return poses

    def sky_poses(self) -> np.ndarray:
        """``(T, 2, 3)`` canvas → frame for the sky: at infinity it only moves with the sway."""
        poses = np.zeros((len(self.pan), 2, 3))
        poses[:, 0, 0] = poses[:, 1, 1] = 1.0
        poses[:, 0, 2] = self.pan[:, 0] - self.margin[0]
        poses[:, 1, 2] = self.pan[:, 1] - self.margin[1]
        return poses


def make_camera(rng: np.random.Generator, height: int, width: int, frames: int, fps: float) -> Camera:
    """A camera for one video: ego speed 3–9 m/s, capped so the backdrop zooms at most ~1.7×."""
    margin = (int(np.ceil(0.1 * width)), int(np.ceil(0.06 * height)))
    t = np.arange(frames, dtype=float)
    ax = rng.uniform(0.3, 0.8) * margin[0]
    ay = rng.uniform(0.2, 0.6) * margin[1]
    px, py = rng.uniform(60, 140), rng.uniform(15, 40)
    phx, phy = rng.uniform(0, 2 * np.pi, size=2)
    pan = np.stack([ax * np.sin(2 * np.pi * t / px + phx), ay * np.sin(2 * np.pi * t / py + phy)], axis=1)
    dt = 1.0 / fps
    speed = min(rng.uniform(3.0, 9.0), 25.0 / max(frames * dt, 1e-9))
    backdrop_depth = 60.0
    zoom = backdrop_depth / (backdrop_depth - speed * dt * t)
    return Camera(focal=0.8 * width, horizon=height * rng.uniform(0.38, 0.44), vp_x=width * rng.uniform(0.45, 0.55),
                  height_m=1.5, pan=pan, zoom=zoom, ego_step=speed * dt, margin=margin)


def as3x3(pose: np.ndarray) -> np.ndarray:
    """A ``(2, 3)`` affine map as a ``(3, 3)`` homogeneous matrix."""
    return np.vstack([pose, [0.0, 0.0, 1.0]])
