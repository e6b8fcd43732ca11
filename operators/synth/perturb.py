"""Predictions made from ground truth: the inputs of demos, tracker ablations and tests.

* :func:`scramble_ids` — per-frame ids that are *not* consistent over time (what a
  per-frame panoptic segmenter gives), segmentation otherwise perfect.
* :func:`perturb_frame` — a noisy per-frame segmentation: thing masks eroded or dilated,
  segments dropped, spurious segments added, then ids scrambled.

All functions are deterministic given the ``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from operators.formats.panoptic import VOID, PanopticFrame, SegmentInfo, segments_from_ids


@dataclass(frozen=True)
class NoiseConfig:
    """How far a simulated per-frame segmenter is from the ground truth."""

    boundary_px: int = 2          # thing masks are eroded or dilated by up to this many pixels
    drop_prob: float = 0.05       # probability that a thing segment is missed (becomes VOID)
    spurious_per_frame: float = 0.3  # expected number of false thing segments per frame
    spurious_size: float = 0.02   # side of a spurious box, as a fraction of the frame height
    crowd_to_void: bool = True    # predictions have no crowd notion: crowd regions are left VOID


def scramble_ids(frame: PanopticFrame, rng: np.random.Generator, score_range=(0.5, 1.0)) -> PanopticFrame:
    """Renumber the segments of ``frame`` with fresh random ids (1..2**24-1) and give each a score."""
    old_ids = np.array([s.id for s in frame.segments], dtype=np.int64)
    new_ids = rng.choice(np.arange(1, 1 << 20), size=len(old_ids), replace=False).astype(np.int64)
    lut_keys = np.concatenate([[VOID], old_ids])
    lut_vals = np.concatenate([[VOID], new_ids])
    order = np.argsort(lut_keys)
    idx = np.searchsorted(lut_keys[order], frame.ids)
    ids = lut_vals[order][idx].astype(np.int32)
    segments = [SegmentInfo(int(n), s.category_id, s.area, s.bbox, s.iscrowd,
                            float(rng.uniform(*score_range))) for s, n in zip(frame.segments, new_ids)]
    return PanopticFrame(ids, segments)


def perturb_frame(frame: PanopticFrame, rng: np.random.Generator, things: set[int],
                  noise: NoiseConfig = NoiseConfig()) -> PanopticFrame:
    """A noisy per-frame prediction of ``frame`` (ids scrambled). ``things`` are thing category ids."""
    ids = frame.ids.copy()
    category_of = {s.id: s.category_id for s in frame.segments}
    for seg in frame.segments:
        if seg.iscrowd and noise.crowd_to_void:
            ids[ids == seg.id] = VOID
    for seg in frame.segments:
        if seg.category_id not in things or seg.iscrowd:
            continue
        if rng.random() < noise.drop_prob:
            ids[ids == seg.id] = VOID
            continue
        radius = int(rng.integers(0, noise.boundary_px + 1)) if noise.boundary_px else 0
        if radius:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            mask = (ids == seg.id).astype(np.uint8)
            if rng.random() < 0.5:  # erode: the lost border becomes VOID
                ids[(mask > 0) & (cv2.erode(mask, kernel) == 0)] = VOID
            else:  # dilate into neighbours
                ids[(cv2.dilate(mask, kernel) > 0) & (mask == 0)] = seg.id
    next_id = max(category_of, default=0) + 1
    height, width = ids.shape
    thing_list = sorted(things)
    for _ in range(rng.poisson(noise.spurious_per_frame)):
        side = max(2, int(noise.spurious_size * height))
        y, x = int(rng.integers(0, max(1, height - side))), int(rng.integers(0, max(1, width - side)))
        ids[y:y + side, x:x + side] = next_id
        category_of[next_id] = int(rng.choice(thing_list))
        next_id += 1
    present = set(np.unique(ids).tolist()) - {VOID}
    segments = segments_from_ids(ids, {i: category_of[i] for i in present})
    return scramble_ids(PanopticFrame(ids, segments), rng)
