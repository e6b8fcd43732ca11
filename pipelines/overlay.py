"""Overlay frames people can look at: each track id painted in its own colour, the same in
every frame (the colour is a function of the id alone), over the video frame. Stuff takes its
category's colour from the model's categories (default: Cityscapes')."""
from __future__ import annotations

import zlib

import cv2
import numpy as np

from typing import Sequence

from operators.formats.categories import CITYSCAPES_CATEGORIES, Category


def _stuff_colours(categories: Sequence[Category]) -> dict[int, tuple[int, int, int]]:
    return {c.id + 1: c.color for c in categories}  # the tracker's stuff ids: category + 1


_CITYSCAPES_COLOURS = _stuff_colours(CITYSCAPES_CATEGORIES)


def track_colour(track_id: int, stuff: dict[int, tuple[int, int, int]] = _CITYSCAPES_COLOURS) -> tuple[int, int, int]:
    """RGB colour of a track id: stuff (``category + 1``, in ``stuff``) in its class colour,
    things in a bright hue chosen by CRC-32 of the id, so colours agree across frames, chunks
    and runs."""
    if track_id in stuff:
        return stuff[track_id]
    h = zlib.crc32(int(track_id).to_bytes(8, "little"))
    hsv = np.array([[[h % 180, 160 + (h >> 8) % 96, 200 + (h >> 16) % 56]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def render_overlay(rgb: np.ndarray, ids: np.ndarray, alpha: float = 0.5,
                   categories: Sequence[Category] = CITYSCAPES_CATEGORIES) -> np.ndarray:
    """``rgb (H, W, 3) uint8`` blended with the colours of ``ids (H, W) int`` (VOID left as is),
    segment boundaries drawn in black; stuff in the colours of ``categories``. Returns
    ``(H, W, 3) uint8``."""
    present, inverse = np.unique(ids, return_inverse=True)
    stuff = _CITYSCAPES_COLOURS if categories is CITYSCAPES_CATEGORIES else _stuff_colours(categories)
    palette = np.array([track_colour(int(i), stuff) for i in present], np.float32).reshape(-1, 3)
    painted = palette[inverse.reshape(ids.shape)]
    out = rgb.astype(np.float32)
    paint = ids != 0
    out[paint] = (1 - alpha) * out[paint] + alpha * painted[paint]
    edges = np.zeros(ids.shape, bool)
    edges[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edges[1:, :] |= ids[1:, :] != ids[:-1, :]
    out[edges] = 0
    return out.astype(np.uint8)
