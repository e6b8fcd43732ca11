"""Hand-made scenes for the association tests: coloured rectangles moving over two stuff
regions, with exact flow, GT ids and per-frame scrambled ids (what a per-frame segmenter gives)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from operators.association import TrackerFrame
from operators.formats.panoptic import PanopticFrame, SegmentInfo, segments_from_ids

ROAD, SKY, PERSON, RIDER, CAR = 0, 10, 11, 12, 13


@dataclass
class Box:
    """A rectangle thing: GT id, category, top-left (x, y) at frame 0, size, velocity px/frame, RGB.
    ``hidden`` frames are not drawn (occlusion / missed detection)."""

    gt_id: int
    category: int
    x: float
    y: float
    w: int
    h: int
    vx: float
    vy: float
    colour: tuple[int, int, int]
    hidden: frozenset = frozenset()
    score: float = 0.9
    category_at: dict = field(default_factory=dict)  # frame → category override

    def rect(self, t: int) -> tuple[int, int, int, int]:
        return int(round(self.x + self.vx * t)), int(round(self.y + self.vy * t)), self.w, self.h


def render(boxes: list[Box], t: int, height: int = 64, width: int = 96) -> tuple[np.ndarray, PanopticFrame, np.ndarray]:
    """(rgb, GT frame, flow t → t-1) of frame ``t``; later boxes are drawn on top."""
    ids = np.zeros((height, width), np.int32)
    ids[: height // 3] = 1000 * (SKY + 1)
    ids[height // 3:] = 1000 * (ROAD + 1)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[: height // 3] = (120, 160, 220)
    rgb[height // 3:] = (90, 90, 90)
    flow = np.zeros((height, width, 2), np.float32)
    category = {1000 * (SKY + 1): SKY, 1000 * (ROAD + 1): ROAD}
    score = {}
    for box in boxes:
        if t in box.hidden:
            continue
        x, y, w, h = box.rect(t)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 <= x0 or y1 <= y0:
            continue
        ids[y0:y1, x0:x1] = box.gt_id
        rgb[y0:y1, x0:x1] = box.colour
        px, py, _, _ = box.rect(t - 1)
        flow[y0:y1, x0:x1] = (px - x, py - y)
        category[box.gt_id] = box.category_at.get(t, box.category)
        score[box.gt_id] = box.score
    present = set(np.unique(ids).tolist())
    segments = segments_from_ids(ids, category)
    for s in segments:
        s.score = score.get(s.id)
    return rgb, PanopticFrame(ids, [s for s in segments if s.id in present]), flow


def scramble(frame: PanopticFrame, rng: np.random.Generator) -> tuple[PanopticFrame, dict[int, int]]:
    """Fresh random ids for every segment; returns the frame and new id → GT id."""
    new = rng.choice(np.arange(1, 1 << 20), size=len(frame.segments), replace=False)
    lut = {s.id: int(n) for s, n in zip(frame.segments, new)}
    ids = np.zeros_like(frame.ids)
    for old, n in lut.items():
        ids[frame.ids == old] = n
    order = rng.permutation(len(frame.segments))
    segments = [SegmentInfo(lut[s.id], s.category_id, s.area, s.bbox, s.iscrowd, s.score)
                for s in (frame.segments[i] for i in order)]
    return PanopticFrame(ids, segments), {n: old for old, n in lut.items()}


def scrambled_video(boxes: list[Box], frames: int, seed: int = 0, height: int = 64, width: int = 96):
    """[(TrackerFrame with scrambled ids, GT frame, scrambled id → GT id)] for frames 0..frames-1."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(frames):
        rgb, gt, flow = render(boxes, t, height, width)
        pred, to_gt = scramble(gt, rng)
        out.append((TrackerFrame(t, pred, rgb, flow if t else None, image_id=f"v_{t:04d}"), gt, to_gt))
    return out


def identity_switches(outputs: list[PanopticFrame], gts: list[PanopticFrame]) -> tuple[int, dict[int, set[int]]]:
    """ID switches of thing tracks: for each GT id, the number of times the output id covering
    it changes between frames where it is visible. Also GT id → set of output ids."""
    last: dict[int, int] = {}
    seen: dict[int, set[int]] = {}
    switches = 0
    for out, gt in zip(outputs, gts):
        for s in gt.segments:
            if s.id < 1000 * (PERSON + 1):
                continue
            values, counts = np.unique(out.ids[gt.ids == s.id], return_counts=True)
            pred = int(values[np.argmax(counts)])
            if pred == 0:
                continue
            if s.id in last and last[s.id] != pred:
                switches += 1
            last[s.id] = pred
            seen.setdefault(s.id, set()).add(pred)
    return switches, seen
