"""Overlay frames people can look at: each track id painted in its own colour, the same in
every frame (the colour is a function of the id alone), over the video frame."""
from __future__ import annotations

import zlib

import cv2
import numpy as np

from operators.formats.categories import CITYSCAPES_CATEGORIES

_STUFF_COLOURS = {c.id + 1: c.color for c in CITYSCAPES_CATEGORIES}  # the tracker's stuff ids: category + 1


def track_colour(track_id: int) -> tuple[int, int, int]:
    """RGB colour of a track id: stuff (ids ≤ 256) in its Cityscapes class colour, things in a
    bright hue chosen by CRC-32 of the id, so colours agree across frames, chunks and runs."""
    if track_id in _STUFF_COLOURS:
        return _STUFF_COLOURS[track_id]
    h = zlib.crc32(int(track_id).to_bytes(8, "little"))
    hsv = np.array([[[h % 180, 160 + (h >> 8) % 96, 200 + (h >> 16) % 56]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def render_overlay(rgb: np.ndarray, ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``rgb (H, W, 3) uint8`` blended with the colours of ``ids (H, W) int`` (VOID left as is),
    segment boundaries drawn in black. Returns ``(H, W, 3) uint8``."""
    present, inverse = np.unique(ids, return_inverse=True)
    palette = np.array([track_colour(int(i)) for i in present], np.float32).reshape(-1, 3)
    painted = palette[inverse.reshape(ids.shape)]
    out = rgb.astype(np.float32)
    paint = ids != 0
    out[paint] = (1 - alpha) * out[paint] + alpha * painted[paint]
    edges = np.zeros(ids.shape, bool)
    edges[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edges[1:, :] |= ids[1:, :] != ids[:-1, :]
    out[edges] = 0
    return out.astype(np.uint8)
