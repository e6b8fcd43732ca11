"""Moving things: world tracks, their sprites, and their per-frame poses.

Each thing follows a smooth track in metres relative to the camera — lateral ``x(t)`` and
depth ``z(t)`` — and is drawn at scale ``focal / z`` standing on the ground, so things
that approach grow and things that drive away shrink. Track kinds give a street its
traffic: cars ahead, oncoming traffic, parked cars, pedestrians and cyclists crossing,
walkers on the sidewalk, and one car that swerves out of the frame and comes back (it
keeps its GT id, as every instance does for the whole video).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.formats.categories import CATEGORY_BY_NAME
from operators.synth.config import ScenarioKnobs
from operators.synth.layers import Body, Camera, Layer
from operators.synth.sprites import crowd_parts, extent, rasterise, thing_parts

Z_VISIBLE = 1.5  # metres: closer than this a thing has passed the camera and is not drawn
REENTER_MIN_FRAMES = 60  # the swerving car needs a long video to leave and come back at a sane speed
CLASS_WEIGHTS = {"car": 0.36, "person": 0.26, "rider": 0.1, "truck": 0.07, "bus": 0.05, "motorcycle": 0.06,
                 "bicycle": 0.07, "train": 0.03}


@dataclass
class Track:
    """A smooth trajectory: ``x (T,)`` lateral and ``z (T,)`` depth in metres; ``view``
    is "rear" (moving along the road) or "side" (crossing); ``mirror`` when moving left."""

    x: np.ndarray
    z: np.ndarray
    view: str
    mirror: bool
    speed: float  # m/s of the thing itself, sets the stride of walking limbs


def _smooth_wobble(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * t / rng.uniform(20, 60) + rng.uniform(0, 2 * np.pi))


def make_track(rng: np.random.Generator, kind: str, camera: Camera, knobs: ScenarioKnobs, frames: int, fps: float,
               road: tuple[float, float]) -> Track:
    """A track of ``kind``: lead, oncoming, parked, crossing, walker or reenter."""
    t = np.arange(frames, dtype=float)
    dt, ego = 1.0 / fps, camera.ego_step
    z0 = rng.uniform(*knobs.depth_range)
    if kind == "lead":
        x = rng.choice([0.0, road[1] - 1.8]) + _smooth_wobble(rng, t, 0.4)
        vz = rng.uniform(-2.0, 2.0) * dt
        return Track(x, z0 + vz * t + _smooth_wobble(rng, t, 1.0), "rear", False, rng.uniform(4, 12))
    if kind == "oncoming":
        x = np.full(frames, -rng.uniform(2.5, max(2.6, road[0] - 1.0)))
        z = z0 * rng.uniform(1.0, 1.6) - (ego + rng.uniform(4, 10) * dt) * t
        return Track(x, z, "rear", False, rng.uniform(4, 12))
    if kind == "parked":
        side = rng.choice([-1.0, 1.0])
        x = np.full(frames, side * (road[0] - 1.0 if side < 0 else road[1] - 1.0))
        return Track(x, z0 - ego * t, "rear", False, 0.0)
    if kind == "crossing":
        direction = rng.choice([-1.0, 1.0])
        speed = rng.uniform(1.0, 2.0) if rng.random() < 0.6 else rng.uniform(3.0, 6.0)
        span = (0.5 * camera.vp_x / camera.focal + 0.15) * z0 + 2.0  # wide enough to cross the whole frame
        start = -direction * rng.uniform(0.3, 1.0) * span
        x = start + direction * speed * dt * t
        return Track(x, z0 - 0.3 * ego * t, "side", direction < 0, speed)
    if kind == "walker":
        side = rng.choice([-1.0, 1.0])
        x = np.full(frames, side * ((road[0] if side < 0 else road[1]) + rng.uniform(0.8, 2.0)))
        speed = rng.uniform(0.8, 1.8)
        return Track(x + _smooth_wobble(rng, t, 0.15), z0 - ego * t + rng.choice([-1, 1]) * speed * dt * t,
                     "rear", False, speed)
    if kind == "reenter":
        # lateral swing wide enough to leave the frame on one side and come back
        half_view = 0.5 * 2 * max(camera.vp_x, 1.0) / camera.focal
        z = np.full(frames, rng.uniform(max(6.0, knobs.depth_range[0]), max(8.0, 0.6 * knobs.depth_range[1])))
        amplitude = (half_view + 0.35) * z[0] + 3.0
        phase = rng.uniform(0.15, 0.35) * 2 * np.pi
        x = amplitude * np.sin(2 * np.pi * t / max(frames, 2) + phase) * rng.choice([-1, 1])
        return Track(x, z, "rear", False, 6.0)
    raise ValueError(f"unknown track kind {kind!r}")


def _poses(track: Track, camera: Camera, ppm: float, origin: tuple[float, float], pivots: list[tuple[float, float]],
           swings: list[float], articulation: float, breathing: float, rng: np.random.Generator,
           fps: float) -> list[np.ndarray]:
    """Per part ``(T, 2, 3)`` canvas → frame: scale ``focal / z / ppm`` about the ground
    point, anisotropic breathing, limbs rotated about their pivot."""
    frames = len(track.z)
    t = np.arange(frames, dtype=float)
    z = np.maximum(track.z, 0.5)
    ground = camera.project(track.x, np.zeros(frames), z, np.arange(frames))
    k = camera.focal / z / ppm
    phase_b = rng.uniform(0, 2 * np.pi)
    bx = 1.0 + breathing * np.sin(2 * np.pi * t / rng.uniform(6, 14) + phase_b)
    sx, sy = k * bx, k / bx
    instance = np.zeros((frames, 3, 3))
    instance[:, 0, 0], instance[:, 1, 1], instance[:, 2, 2] = sx, sy, 1.0
    instance[:, 0, 2] = ground[:, 0] - sx * origin[0]
    instance[:, 1, 2] = ground[:, 1] - sy * origin[1]
    stride = 2 * np.pi * min(1.8, 0.6 + 0.5 * track.speed) / fps  # steps per second → radians per frame
    gait = np.sin(stride * t + rng.uniform(0, 2 * np.pi))
    out = []
    for pivot, swing in zip(pivots, swings):
        poses = instance.copy()
        if swing and articulation:
            angle = articulation * swing * gait
            c, s = np.cos(angle), np.sin(angle)
            rot = np.zeros((frames, 3, 3))
            rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1.0
            shift, back = np.eye(3), np.eye(3)
            shift[:2, 2], back[:2, 2] = pivot, (-pivot[0], -pivot[1])
            poses = instance @ shift @ rot @ back
        out.append(poses[:, :2, :])
    return out


class ThingFactory:
    """Builds thing bodies for one video, numbering instances per class from 1."""

    def __init__(self, camera: Camera, knobs: ScenarioKnobs, frames: int, fps: float, height: int):
        self.camera, self.knobs, self.frames, self.fps, self.height = camera, knobs, frames, fps, height
        self.next_k: dict[int, int] = {}

    def new_id(self, name: str) -> tuple[int, int]:
        category = CATEGORY_BY_NAME[name].id
        self.next_k[category] = self.next_k.get(category, 0) + 1
        return 1000 * (category + 1) + self.next_k[category], category

    def body(self, name: str, track: Track, rng: np.random.Generator, *, instance_id: int, crowd_people: int = 0,
             depth_offset: float = 0.0, appearance_rng: np.random.Generator | None = None) -> Body:
        """The body of one instance following ``track`` (a crowd when ``crowd_people`` > 0)."""
        # Appearance draws from its own stream (one draw from ``rng``), so a change of
        # texture detail never moves the tracks of the things created after this one.
        look = appearance_rng if appearance_rng is not None else np.random.default_rng(int(rng.integers(1 << 62)))
        parts = crowd_parts(look, crowd_people) if crowd_people else thing_parts(name, track.view, look)
        z = np.maximum(track.z, 0.5)
        visible = track.z >= Z_VISIBLE
        near_ppm = self.camera.focal / (z[visible].min() if visible.any() else z.min())
        far_ppm = self.camera.focal / (z[visible].max() if visible.any() else z.max())
        xmin, ymin, xmax, ymax = extent(parts)
        # Rasterise at the largest on-screen size (capped), blur the texture enough that it
        # is not aliased at the smallest size: flow and bilinear resampling both need that.
        cap = min(1.5 * self.height, 900.0) / max(xmax - xmin, ymax - ymin)
        ppm = float(np.clip(near_ppm * (1 + self.knobs.breathing), 2.0, cap))
        sigma = float(np.clip(1.5 * ppm / far_ppm, 1.5, 10.0))
        sprite = rasterise(parts, ppm, sigma, look, mirror=track.mirror)
        pivots = [part.pivot_px for part in sprite.parts]
        swings = [p.swing * (-1 if track.mirror else 1) for p in parts]
        articulation = 0.0 if crowd_people else self.knobs.articulation * (track.speed > 0)
        poses = _poses(track, self.camera, ppm, sprite.origin_px, pivots, swings, articulation,
                       0.0 if crowd_people else self.knobs.breathing, rng, self.fps)
        layers = [Layer(part.texture, part.mask, pose) for part, pose in zip(sprite.parts, poses)]
        return Body(name, layers, np.array([0, instance_id], np.int32), track.z - depth_offset, visible,
                    instance_id=instance_id, iscrowd=bool(crowd_people))


def make_things(rng: np.random.Generator, camera: Camera, knobs: ScenarioKnobs, frames: int, fps: float,
                height: int, road: tuple[float, float], crowd: bool) -> tuple[list[Body], dict[int, int], dict[int, int]]:
    """All moving bodies of a video, with panoptic id → category and id → iscrowd."""
    factory = ThingFactory(camera, knobs, frames, fps, height)
    names = list(CLASS_WEIGHTS)
    weights = np.array(list(CLASS_WEIGHTS.values()))
    bodies, category_of, iscrowd_of = [], {}, {}
    similar_looks = {name: int(rng.integers(1 << 31)) for name in names}

    def look(name: str) -> np.random.Generator | None:
        return np.random.default_rng(similar_looks[name]) if knobs.same_appearance else None

    for n in range(knobs.things):
        name = str(rng.choice(names, p=weights / weights.sum()))
        if n == 0 and frames >= REENTER_MIN_FRAMES:
            kind, name = "reenter", "car"
        elif name in ("person",):
            kind = "crossing" if rng.random() < knobs.crossing_share else "walker"
        elif name == "train":
            kind = "crossing"
        else:
            kind = "crossing" if rng.random() < knobs.crossing_share else str(
                rng.choice(["lead", "oncoming", "parked"], p=[0.45, 0.3, 0.25]))
        track = make_track(rng, kind, camera, knobs, frames, fps, road)
        if name == "train":  # a tram crossing far away: long, so keep it at distance
            track.z = track.z + 25.0
        instance_id, category = factory.new_id(name)
        bodies.append(factory.body(name, track, rng, instance_id=instance_id, appearance_rng=look(name)))
        category_of[instance_id] = category
        if name == "rider":  # a rider sits on a bicycle or motorcycle that moves with them
            vehicle = "bicycle" if rng.random() < 0.7 else "motorcycle"
            vehicle_id, vehicle_category = factory.new_id(vehicle)
            bodies.append(factory.body(vehicle, track, rng, instance_id=vehicle_id, depth_offset=-0.01,
                                       appearance_rng=look(vehicle)))
            category_of[vehicle_id] = vehicle_category
    if crowd:
        side = rng.choice([-1.0, 1.0])
        t = np.arange(frames, dtype=float)
        x = np.full(frames, side * ((road[0] if side < 0 else road[1]) + rng.uniform(1.5, 2.5)))
        z = rng.uniform(12, 30) - camera.ego_step * t + rng.uniform(-0.05, 0.05) * t
        crowd_id = 1000 * (CATEGORY_BY_NAME["person"].id + 1)  # instance number 0: a crowd has no identity
        bodies.append(factory.body("crowd", Track(x, z, "rear", False, 0.0), rng, instance_id=crowd_id,
                                   crowd_people=int(rng.integers(4, 8))))
        category_of[crowd_id] = CATEGORY_BY_NAME["person"].id
        iscrowd_of[crowd_id] = 1
    return bodies, category_of, iscrowd_of
