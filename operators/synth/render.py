"""Rasterising a scene: textured layers composited back to front, with GT ids and GT flow.

For each body (far to near) and each of its layers, the canvas is warped into the frame
with its pose: labels with nearest-neighbour (ids are never blended), texture bilinearly.
Where the warped label is non-zero the layer covers the pixel: it writes the colour, the
panoptic id and the flow. The flow of a pixel x covered by a layer with poses P_t, P_{t−1}
is ``P_{t−1} P_t⁻¹ x − x`` (current → previous, tubeflow's convention): exact for the
rendered motion, occlusions included, because the same mask decides colour, id and flow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np

from operators.formats.panoptic import PanopticFrame, segments_from_ids
from operators.synth.config import SynthConfig
from operators.synth.layers import Body, Scene, as3x3
from operators.synth.scene import build_scene


@dataclass
class SynthFrame:
    """One rendered frame with its ground truth.

    ``rgb (H, W, 3) uint8``; ``panoptic``: GT ids ``1000 · (category + 1) + k`` (k = 0 for
    stuff and crowds, k ≥ 1 per thing instance, stable through the video; 0 = VOID);
    ``flow (H, W, 2) float32`` current → previous (None for frame 0); ``amodal_areas``:
    thing/crowd id → pixels the whole object covers in this frame before occlusion by
    nearer things (visible area = its segment's ``area``).
    """

    video_id: str
    frame_index: int
    image_id: str
    rgb: np.ndarray
    panoptic: PanopticFrame
    flow: np.ndarray | None
    amodal_areas: dict[int, int] = field(default_factory=dict)


def _roi(body: Body, t: int, height: int, width: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the frame pixels the body's canvases can reach at frame ``t``."""
    xs, ys = [], []
    for layer in body.layers:
        h, w = layer.labels.shape
        corners = np.array([[-1.0, -1.0], [w, -1.0], [w, h], [-1.0, h]])
        pose = layer.poses[t]
        mapped = corners @ pose[:, :2].T + pose[:, 2]
        xs.append(mapped[:, 0])
        ys.append(mapped[:, 1])
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    x0, y0 = max(0, int(np.floor(xs.min()))), max(0, int(np.floor(ys.min())))
    x1, y1 = min(width, int(np.ceil(xs.max())) + 1), min(height, int(np.ceil(ys.max())) + 1)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def render_frame(scene: Scene, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[int, int]]:
    """Frame ``t`` of ``scene``: ``rgb (H, W, 3) uint8``, ``ids (H, W) int32``, ``flow (H, W, 2)
    float32`` or None at t = 0, and the amodal area of every thing/crowd body in view."""
    height, width = scene.height, scene.width
    rgb = np.zeros((height, width, 3), np.uint8)
    ids = np.zeros((height, width), np.int32)
    flow = np.zeros((height, width, 2), np.float32) if t > 0 else None
    amodal: dict[int, int] = {}
    order = sorted(range(len(scene.bodies)), key=lambda i: (-scene.bodies[i].depth[t], i))
    for body in (scene.bodies[i] for i in order):
        if not body.visible[t]:
            continue
        roi = _roi(body, t, height, width)
        if roi is None:
            continue
        x0, y0, x1, y1 = roi
        size = (x1 - x0, y1 - y0)
        rgb_roi, ids_roi = rgb[y0:y1, x0:x1], ids[y0:y1, x0:x1]
        covered = np.zeros((y1 - y0, x1 - x0), bool)
        for layer in body.layers:
            pose = layer.poses[t].copy()
            pose[:, 2] -= (x0, y0)  # canvas → ROI pixels
            labels = cv2.warpAffine(layer.labels, pose, size, flags=cv2.INTER_NEAREST,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            mask = labels > 0
            if not mask.any():
                continue
            texture = cv2.warpAffine(layer.texture, pose, size, flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
            np.copyto(rgb_roi, texture, where=mask[..., None])
            np.copyto(ids_roi, body.ids[labels], where=mask)
            if flow is not None:
                _layer_flow(flow[y0:y1, x0:x1], mask, layer.poses[t], layer.poses[t - 1], x0, y0)
            covered |= mask
        if body.instance_id is not None and covered.any():
            amodal[body.instance_id] = amodal.get(body.instance_id, 0) + int(covered.sum())
    return rgb, ids, flow, amodal


def _layer_flow(flow_roi: np.ndarray, mask: np.ndarray, pose_now: np.ndarray, pose_prev: np.ndarray,
                x0: int, y0: int) -> None:
    """Write ``P_prev P_now⁻¹ x − x`` into ``flow_roi (h, w, 2)`` where ``mask (h, w) bool``."""
    m = as3x3(pose_prev) @ np.linalg.inv(as3x3(pose_now))
    h, w = mask.shape
    xs = np.arange(x0, x0 + w, dtype=np.float64)[None, :]
    ys = np.arange(y0, y0 + h, dtype=np.float64)[:, None]
    fx = (m[0, 0] - 1.0) * xs + (m[0, 1] * ys + m[0, 2])
    fy = m[1, 0] * xs + ((m[1, 1] - 1.0) * ys + m[1, 2])
    np.copyto(flow_roi[..., 0], fx, where=mask, casting="same_kind")
    np.copyto(flow_roi[..., 1], fy, where=mask, casting="same_kind")


def generate_video(cfg: SynthConfig, video_index: int) -> Iterator[SynthFrame]:
    """The frames of video ``video_index`` of ``cfg`` with their GT, in frame order.

    Deterministic by ``(cfg, video_index)``: the scene is built once, frames are rendered
    lazily, so a long video at 1024×2048 needs one frame's memory at a time.
    """
    if not 0 <= video_index < cfg.videos:
        raise IndexError(f"video_index {video_index} outside 0..{cfg.videos - 1}")
    scene = build_scene(cfg, video_index)
    video_id = cfg.video_id(video_index)
    for t in range(cfg.frames):
        rgb, ids, flow, amodal = render_frame(scene, t)
        segments = segments_from_ids(ids, scene.category_of, scene.iscrowd_of)
        yield SynthFrame(video_id, t, cfg.image_id(video_index, t), rgb, PanopticFrame(ids, segments), flow, amodal)
