"""OpenCV DIS optical flow (Kroeger et al., ECCV 2016): the default CPU flow estimator."""
from __future__ import annotations

import cv2
import numpy as np

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


class DisFlow:
    """``DisFlow(preset)(current, previous)`` → ``(H, W, 2) float32`` flow current → previous."""

    name = "dis"

    def __init__(self, preset: str = "medium"):
        if preset not in PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(PRESETS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(PRESETS[preset])

    def __call__(self, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
        if current.shape != previous.shape:
            raise ValueError(f"frames differ in shape: {current.shape} vs {previous.shape}")
        # calc(I0, I1) returns f with I0(x) ≈ I1(x + f(x)); I0 = current gives current → previous.
        return self._dis.calc(_gray(current), _gray(previous), None)


def _gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
