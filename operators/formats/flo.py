"""Middlebury ``.flo`` optical-flow files (the field's standard; read by every flow toolkit).

Layout: float32 magic 202021.25, int32 width, int32 height, then (H, W, 2) float32 (dx, dy).
tubeflow's convention for a flow field is *current → previous*: ``flow[y, x] = (dx, dy)``
means pixel (x, y) of frame t shows what pixel (x + dx, y + dy) showed in frame t-1.
"""
from __future__ import annotations

import numpy as np

from operators import fs
from operators.errors import CorruptFileError

_MAGIC = np.float32(202021.25)


def encode_flo(flow: np.ndarray) -> bytes:
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    h, w = flow.shape[:2]
    return _MAGIC.tobytes() + np.array([w, h], np.int32).tobytes() + flow.tobytes()


def decode_flo(data: bytes, where: str) -> np.ndarray:
    if len(data) < 12 or np.frombuffer(data[:4], np.float32)[0] != _MAGIC:
        raise CorruptFileError(where, "not a Middlebury .flo file (bad magic number)")
    w, h = np.frombuffer(data[4:12], np.int32)
    expected = 12 + int(w) * int(h) * 8
    if w <= 0 or h <= 0 or len(data) != expected:
        raise CorruptFileError(where, f".flo header says {w}x{h} but the file has {len(data)} bytes, not {expected}")
    return np.frombuffer(data[12:], np.float32).reshape(int(h), int(w), 2).copy()


def write_flo(uri: str, flow: np.ndarray) -> None:
    fs.write_bytes(uri, encode_flo(flow))


def read_flo(uri: str) -> np.ndarray:
    """``(H, W, 2) float32`` flow from a ``.flo`` file at any fsspec URI."""
    return decode_flo(fs.read_input(uri), uri)
