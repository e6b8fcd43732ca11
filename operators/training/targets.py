"""Training targets of the bottom-up panoptic heads, from ground-truth panoptic frames.

Panoptic-DeepLab (Cheng et al., CVPR 2020), Sec. 3.2/3.4: the semantic target is the class
of every pixel (VOID ignored); each non-crowd thing instance is represented by its center
of mass, the center target is a 2-D Gaussian ``exp(−‖x − c‖² / 2σ²)`` around every
center (max over instances), and the offset target of a thing pixel is ``c − x`` for the
center c of its instance. Crowd regions are ignored by the center loss and have no offset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from operators.formats.panoptic import VOID, PanopticFrame

IGNORE = 255  # semantic target of VOID pixels
# Panoptic-DeepLab's threshold (pixels at input resolution), set for Cityscapes at 1024×2048.
# At 256×512 it covers nearly every instance; the same share of the frame is 16×16 there
# (``TrainConfig.small_instance_area``).
SMALL_INSTANCE_AREA = 64 * 64


@dataclass
class PanopticTargets:
    """Targets of a batch, all at input resolution.

    ``semantic (B, H, W) long`` (IGNORE on VOID), ``center (B, 1, H, W)`` heatmap,
    ``center_weight (B, 1, H, W)`` (0 on crowd), ``offset (B, 2, H, W)`` (dy, dx),
    ``offset_weight (B, 1, H, W)`` (1 on non-crowd thing pixels), ``segment_ids (B, H, W) long``
    (the GT panoptic ids, consistent through a video; 0 = VOID, crowd ids included),
    ``small_instance (B, H, W) float`` (1 on pixels of thing instances smaller than
    ``small_area``, by default ``SMALL_INSTANCE_AREA``, 0 elsewhere).
    """

    semantic: torch.Tensor
    center: torch.Tensor
    center_weight: torch.Tensor
    offset: torch.Tensor
    offset_weight: torch.Tensor
    segment_ids: torch.Tensor
    small_instance: torch.Tensor

    def to(self, device: torch.device) -> "PanopticTargets":
        return PanopticTargets(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def frame_targets(frame: PanopticFrame, thing_ids: set[int], sigma: float,
                  small_area: int = SMALL_INSTANCE_AREA) -> dict[str, np.ndarray]:
    """Targets of one frame as numpy arrays (see :class:`PanopticTargets` for shapes)."""
    ids = frame.ids
    height, width = ids.shape
    semantic = np.full((height, width), IGNORE, np.int64)
    center = np.zeros((height, width), np.float32)
    center_weight = np.ones((height, width), np.float32)
    offset = np.zeros((2, height, width), np.float32)
    offset_weight = np.zeros((height, width), np.float32)
    small_instance = np.zeros((height, width), np.float32)
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = int(3 * sigma)
    for seg in frame.segments:
        mask = ids == seg.id
        if not mask.any():
            continue
        semantic[mask] = seg.category_id
        if seg.category_id not in thing_ids:
            continue
        if mask.sum() < small_area:
            small_instance[mask] = 1.0
        if seg.iscrowd:
            center_weight[mask] = 0.0
            continue
        ys, xs = np.nonzero(mask)
        cy, cx = float(ys.mean()), float(xs.mean())
        offset[0][mask] = cy - ys
        offset[1][mask] = cx - xs
        offset_weight[mask] = 1.0
        # The Gaussian only matters within 3σ: paint that window, not the whole frame.
        y0, y1 = max(0, int(cy) - radius), min(height, int(cy) + radius + 1)
        x0, x1 = max(0, int(cx) - radius), min(width, int(cx) + radius + 1)
        window = np.exp(-((grid_y[y0:y1, x0:x1] - cy) ** 2 + (grid_x[y0:y1, x0:x1] - cx) ** 2) / (2 * sigma ** 2))
        np.maximum(center[y0:y1, x0:x1], window, out=center[y0:y1, x0:x1])
    semantic[ids == VOID] = IGNORE
    return {"semantic": semantic, "center": center[None], "center_weight": center_weight[None], "offset": offset,
            "offset_weight": offset_weight[None], "segment_ids": ids.astype(np.int64),
            "small_instance": small_instance}


TARGET_KEYS = tuple(PanopticTargets.__dataclass_fields__)  # field order of PanopticTargets


def batch_targets(frames: list[PanopticFrame], thing_ids: set[int], sigma: float = 8.0) -> PanopticTargets:
    """Stack :func:`frame_targets` of equally sized frames into a :class:`PanopticTargets`."""
    per_frame = [frame_targets(f, thing_ids, sigma) for f in frames]
    return PanopticTargets(*(torch.from_numpy(np.stack([t[key] for t in per_frame])) for key in TARGET_KEYS))
