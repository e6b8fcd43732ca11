"""Small inputs for the metric tests: hand-drawn frames and seeded random corpora.

A case frame is drawn as strings, one character per pixel ('.' = VOID), so a reader can
count pixels by eye; a random corpus perturbs GT into predictions (id switches, merged
ids, noise, VOID) so that matches, near misses, crowd and VOID all occur.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from operators.formats.panoptic import SegmentInfo
from operators.metrics.contingency import FrameTable, frame_table
from operators.metrics.reference import ReferenceFrame


def draw(rows: Sequence[str], ids: Mapping[str, int]) -> np.ndarray:
    """Rows of characters → ``(H, W) int32`` ids; '.' is VOID."""
    return np.array([[0 if ch == "." else ids[ch] for ch in row] for row in rows], np.int32)


def segments(id_map: np.ndarray, category: Mapping[int, int], crowd: Sequence[int] = (),
             order: Sequence[int] | None = None, area: Mapping[int, int] | None = None) -> list[SegmentInfo]:
    """segments_info of the ids in ``id_map`` (JSON order ``order`` or increasing id);
    ``area`` overrides the JSON area of some ids (default: the pixel count)."""
    present = [int(i) for i in np.unique(id_map) if i != 0]
    out = []
    for sid in (order if order is not None else present):
        pixels = int((id_map == sid).sum())
        out.append(SegmentInfo(sid, category[sid], (area or {}).get(sid, pixels), (0, 0, 1, 1), int(sid in crowd)))
    return out


def case_frame(gt_ids: np.ndarray, gt_segments, pred_ids: np.ndarray, pred_segments, index: int = 0) -> FrameTable:
    return frame_table(index, gt_ids, gt_segments, pred_ids, pred_segments)


def random_video(rng: np.random.Generator, frames: int, height: int = 6, width: int = 7,
                 categories: Sequence[int] = (0, 1, 11, 12, 13), things: Sequence[int] = (11, 12, 13)
                 ) -> list[ReferenceFrame]:
    """A random annotated video with tubes, crowd, VOID, objects entering and leaving, id
    switches and category changes in the predictions."""
    n_gt = int(rng.integers(2, 7))
    gt_category = {i: int(rng.choice(categories)) for i in range(1, n_gt + 1)}
    gt_crowd = {i for i in gt_category if gt_category[i] in things and rng.random() < 0.25}
    pred_id_of = {i: int(rng.integers(1, 40)) for i in gt_category}
    pred_category = {}
    out = []
    for f in range(frames):
        alive = [i for i in gt_category if rng.random() < 0.8] or [1]
        gt_ids = rng.choice(np.array(alive + [0]), size=(height, width), p=None).astype(np.int32)
        # blocky: copy rows so that segments are larger than noise
        gt_ids[1::2] = gt_ids[::2][: gt_ids[1::2].shape[0]]
        if rng.random() < 0.3:  # an occasional category change of a GT id (first frame wins)
            gt_category = dict(gt_category)
            changed = int(rng.choice(list(gt_category)))
            gt_category[changed] = int(rng.choice(categories))
        if rng.random() < 0.3:  # an id switch in the predictions from this frame on
            pred_id_of = dict(pred_id_of)
            pred_id_of[int(rng.choice(list(pred_id_of)))] = int(rng.integers(1, 40))
        pred_ids = np.vectorize(lambda i: pred_id_of.get(int(i), 0))(gt_ids).astype(np.int32)
        noise = rng.random(gt_ids.shape)
        pred_ids[noise < 0.15] = 0
        pred_ids[noise > 0.85] = rng.integers(1, 40, size=int((noise > 0.85).sum()))
        for pid in np.unique(pred_ids):
            if pid and (pid not in pred_category or rng.random() < 0.1):
                sources = gt_ids[pred_ids == pid]
                source = int(np.bincount(sources).argmax())
                pred_category[int(pid)] = gt_category.get(source, int(rng.choice(categories))) \
                    if rng.random() < 0.85 else int(rng.choice(categories))
        out.append(ReferenceFrame(gt_ids, segments(gt_ids, gt_category, sorted(gt_crowd),
                                                   order=[int(i) for i in rng.permutation(np.unique(gt_ids)) if i]),
                                  pred_ids, segments(pred_ids, pred_category)))
    return out


def tables(video: Sequence[ReferenceFrame]) -> list[FrameTable]:
    return [frame_table(i, f.gt_ids, f.gt_segments, f.pred_ids, f.pred_segments) for i, f in enumerate(video)]


def random_corpus(seed: int, videos: int = 4, max_frames: int = 6) -> list[list[ReferenceFrame]]:
    rng = np.random.default_rng(seed)
    return [random_video(rng, int(rng.integers(1, max_frames + 1))) for _ in range(videos)]
