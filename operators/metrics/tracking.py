"""Scores of a tracker's output on in-memory videos: VPQ (per k), STQ and ID switches.

For comparisons of trackers on the same per-frame segments (tests, benchmarks): each video is
its GT frames and the tracker's frames, every frame of the video in order; VPQ and STQ are
computed on the annotated frames (``frame_index % annotate_every == 0``) with this package's
:class:`VideoVpq` and :class:`STQuality`, exactly as ``tubeflow evaluate`` scores files; ID
switches (CLEAR-MOT's IDSW, on masks) on every frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from operators.formats.categories import CITYSCAPES_CATEGORIES, Category, categories_by_id
from operators.formats.panoptic import VOID, PanopticFrame
from operators.metrics.contingency import frame_table
from operators.metrics.stq import STQuality
from operators.metrics.vpq import DEFAULT_KS, VideoVpq, VpqStats


@dataclass(frozen=True)
class TrackingScore:
    """Percentages (VPQ, VPQ-Th, VPQ-St, VPQ-Th at the largest k, STQ, AQ) and ID-switch counts."""

    vpq: float
    vpq_th: float
    vpq_st: float
    vpq_th_k: dict[int, float]
    stq: float
    aq: float
    id_switches: int
    tracks: int

    @property
    def idsw_per_100(self) -> float:
        """ID switches per 100 GT thing tracks."""
        return 100.0 * self.id_switches / max(self.tracks, 1)


def id_switches(gts: Sequence[PanopticFrame], preds: Sequence[PanopticFrame], things: set[int]) -> tuple[int, int]:
    """(ID switches, GT thing tracks): a switch is a GT track whose IoU > 0.5 match changes
    predicted id between two frames in which it is matched (CLEAR-MOT's IDSW on masks)."""
    last, tracks, switches = {}, set(), 0
    for gt, pred in zip(gts, preds):
        key = gt.ids.astype(np.int64) * (1 << 24) + pred.ids
        values, counts = np.unique(key, return_counts=True)
        g_ids, p_ids = np.divmod(values, 1 << 24)
        g_area = dict(zip(*np.unique(gt.ids, return_counts=True)))
        p_area = dict(zip(*np.unique(pred.ids, return_counts=True)))
        for s in gt.segments:
            if s.category_id not in things or s.iscrowd:
                continue
            tracks.add(s.id)
            sel = (g_ids == s.id) & (p_ids != VOID)
            for p, inter in zip(p_ids[sel], counts[sel]):
                if inter / (g_area[s.id] + p_area[p] - inter) > 0.5:
                    if s.id in last and last[s.id] != p:
                        switches += 1
                    last[s.id] = p
    return switches, len(tracks)


def score_videos(videos: Sequence[tuple[Sequence[PanopticFrame], Sequence[PanopticFrame]]], annotate_every: int = 5,
                 ks: Sequence[int] = DEFAULT_KS,
                 categories: Sequence[Category] = CITYSCAPES_CATEGORIES) -> TrackingScore:
    """Score ``videos``: each ``(GT frames, predicted frames)``, all frames of the video from 0."""
    by_id = categories_by_id() if categories is CITYSCAPES_CATEGORIES else {c.id: c for c in categories}
    things = {c.id for c in by_id.values() if c.isthing}
    stq = STQuality(max(by_id) + 1, sorted(things))
    parts, switches, tracks = [], 0, 0
    for v, (gts, preds) in enumerate(videos):
        video = VideoVpq(str(v), tuple(ks), annotate_every)
        for t, (gt, pred) in enumerate(zip(gts, preds)):
            if t % annotate_every:
                continue
            table = frame_table(t, gt.ids, gt.segments, pred.ids, pred.segments)
            video.update(table)
            stq.update_from_table(table, str(v))
        parts.append(video.stats())
        s, n = id_switches(gts, preds, things)
        switches, tracks = switches + s, tracks + n
    r = VpqStats.merge(parts).result(by_id, tuple(ks))
    st = stq.result()
    return TrackingScore(100 * r.vpq, 100 * r.vpq_thing, 100 * r.vpq_stuff,
                         {k: 100 * r.per_k[k]["things"]["pq"] for k in ks}, 100 * st["STQ"], 100 * st["AQ"],
                         switches, tracks)
