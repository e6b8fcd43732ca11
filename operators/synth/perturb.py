"""Predictions made from ground truth: the inputs of demos, tracker ablations and tests.

* :func:`scramble_ids` — per-frame ids that are *not* consistent over time (what a
  per-frame panoptic segmenter gives), segmentation otherwise perfect.
* :func:`perturb_frame` — a noisy per-frame segmentation: thing masks eroded or dilated,
  segments dropped, class flips, spurious segments added, then ids scrambled.
* :class:`VideoPerturbation` — the same for a video's frames in order, plus what only a
  video has: *runs* of missed detections (an object missed for several frames in a row, as
  detectors do behind occluders, in glare or at low resolution), keyed by the GT identity.

All functions are deterministic given the ``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from operators.formats.categories import CONFUSABLE_THINGS
from operators.formats.panoptic import VOID, PanopticFrame, SegmentInfo, segments_from_ids


@dataclass(frozen=True)
class NoiseConfig:
    """How far a simulated per-frame segmenter is from the ground truth."""

    boundary_px: int = 2          # thing masks are eroded or dilated by up to this many pixels
    drop_prob: float = 0.05       # probability that a thing segment is missed (becomes VOID)
    spurious_per_frame: float = 0.3  # expected number of false thing segments per frame
    spurious_size: float = 0.02   # side of a spurious box, as a fraction of the frame height
    crowd_to_void: bool = True    # predictions have no crowd notion: crowd regions are left VOID
    class_flip_prob: float = 0.0  # probability that a thing segment takes a confusable class for one frame
    flip_groups: tuple[tuple[int, ...], ...] = CONFUSABLE_THINGS  # which classes a flip may swap
    miss_run_prob: float = 0.0    # per frame, probability that a visible thing starts a run of misses
    miss_run_max: int = 0         # a run lasts 1..miss_run_max frames (uniform); 0 = no runs

    def __post_init__(self) -> None:
        for name in ("drop_prob", "class_flip_prob", "miss_run_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"NoiseConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.boundary_px < 0 or self.miss_run_max < 0 or self.spurious_per_frame < 0:
            raise ValueError("NoiseConfig.boundary_px, miss_run_max and spurious_per_frame must be >= 0")


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
                  noise: NoiseConfig = NoiseConfig(), missed: frozenset[int] = frozenset()) -> PanopticFrame:
    """A noisy per-frame prediction of ``frame`` (ids scrambled). ``things`` are thing category
    ids; ``missed``: GT segment ids to leave out (VOID) whatever the dice say (runs of misses)."""
    ids = frame.ids.copy()
    category_of = {s.id: s.category_id for s in frame.segments}
    for seg in frame.segments:
        if seg.iscrowd and noise.crowd_to_void:
            ids[ids == seg.id] = VOID
    group_of = {c: g for g in noise.flip_groups for c in g}
    for seg in frame.segments:
        if seg.category_id not in things or seg.iscrowd:
            continue
        if seg.id in missed or rng.random() < noise.drop_prob:
            ids[ids == seg.id] = VOID
            continue
        if noise.class_flip_prob and rng.random() < noise.class_flip_prob and seg.category_id in group_of:
            others = [c for c in group_of[seg.category_id] if c != seg.category_id and c in things]
            if others:
                category_of[seg.id] = int(rng.choice(others))
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


class VideoPerturbation:
    """Noisy per-frame predictions of one video's GT frames, given in frame order.

    Adds to :func:`perturb_frame` the runs of missed detections: in each frame, a visible GT
    thing not already in a run starts one with probability ``noise.miss_run_prob``, lasting
    ``1..noise.miss_run_max`` frames (uniform), during which its segment is VOID; at least one
    frame separates two runs of one object, so no object is missed more than ``miss_run_max``
    frames in a row by the runs alone. Runs count frames, not visibility: an object that
    leaves and comes back during a run is still missed. Deterministic given ``rng``; one instance per video::

        perturb = VideoPerturbation(rng, things, noise)
        predictions = [perturb(gt_frame) for gt_frame in gt_frames]
    """

    def __init__(self, rng: np.random.Generator, things: set[int], noise: NoiseConfig = NoiseConfig()):
        self.rng, self.things, self.noise = rng, set(things), noise
        self.missed_until: dict[int, int] = {}   # GT id → first frame after its run of misses
        self.frame = 0

    def __call__(self, frame: PanopticFrame) -> PanopticFrame:
        noise, t = self.noise, self.frame
        if noise.miss_run_max > 0 and noise.miss_run_prob > 0:
            for seg in frame.segments:
                if seg.category_id in self.things and not seg.iscrowd and self.missed_until.get(seg.id, -1) < t \
                        and self.rng.random() < noise.miss_run_prob:
                    self.missed_until[seg.id] = t + int(self.rng.integers(1, noise.miss_run_max + 1))
        missed = frozenset(i for i, stop in self.missed_until.items() if stop > t)
        self.frame += 1
        return perturb_frame(frame, self.rng, self.things, noise, missed)
