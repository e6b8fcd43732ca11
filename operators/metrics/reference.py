"""A slow, obviously-correct VPQ: stack each window's pixels and count, like the paper.

For tests and the benchmark only. It follows the benchmark evaluator's procedure step by
step (mcahny/vps ``tools/eval_vpq.py``): stack the window's id maps into a ``(n, H, W)``
volume, so equal ids in different frames are one tube; count every (GT, pred) voxel pair
with ``np.unique``; take predicted areas from the voxels and GT areas from the JSON
records; match, then count FN and FP with the crowd/VOID rule. It shares no code with
:mod:`operators.metrics.vpq` (which never sees a pixel of a window).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from operators.formats.panoptic import SegmentInfo

OFFSET = 1 << 24


@dataclass
class ReferenceFrame:
    """One annotated frame: ``(H, W)`` id maps and their segments_info."""

    gt_ids: np.ndarray
    gt_segments: Sequence[SegmentInfo]
    pred_ids: np.ndarray
    pred_segments: Sequence[SegmentInfo]


def reference_window(frames: Sequence[ReferenceFrame], gt_records: Sequence[dict[int, dict]],
                     sums: dict[int, list]) -> None:
    """Add one window's per-category [iou, tp, fp, fn] into ``sums``.

    ``gt_records[i]`` maps id → {"category_id", "iscrowd", "area"} for frame i of the window;
    these dicts are *the* records of the video (shared across windows), and the first
    frame's record of a tube receives the window's area, as in the evaluator.
    """
    gt_volume = np.stack([f.gt_ids.astype(np.int64) for f in frames])
    pred_volume = np.stack([f.pred_ids.astype(np.int64) for f in frames])
    gt_tubes: dict[int, dict] = {}
    for records in gt_records:
        for sid, record in records.items():
            if sid in gt_tubes:
                gt_tubes[sid]["area"] += record["area"]
            else:
                gt_tubes[sid] = record
    pred_category: dict[int, int] = {}
    for frame in frames:
        for s in frame.pred_segments:
            pred_category.setdefault(s.id, s.category_id)
    labels, counts = np.unique(pred_volume, return_counts=True)
    pred_area = {int(l): int(c) for l, c in zip(labels, counts)}
    labels, counts = np.unique(gt_volume * OFFSET + pred_volume, return_counts=True)
    overlap = {(int(l) // OFFSET, int(l) % OFFSET): int(c) for l, c in zip(labels, counts)}

    def add(category: int, slot: int, value) -> None:
        sums.setdefault(category, [0.0, 0, 0, 0])[slot] += value

    gt_matched, pred_matched = set(), set()
    for (g, p), inter in overlap.items():
        if g not in gt_tubes or p not in pred_category:
            continue
        if gt_tubes[g]["iscrowd"] == 1 or gt_tubes[g]["category_id"] != pred_category[p]:
            continue
        iou = inter / (pred_area[p] + gt_tubes[g]["area"] - inter - overlap.get((0, p), 0))
        if iou > 0.5:
            add(gt_tubes[g]["category_id"], 0, iou)
            add(gt_tubes[g]["category_id"], 1, 1)
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, tube in gt_tubes.items():
        if g in gt_matched:
            continue
        if tube["iscrowd"] == 1:
            crowd[tube["category_id"]] = g
            continue
        add(tube["category_id"], 3, 1)
    for p, category in pred_category.items():
        if p in pred_matched:
            continue
        ignored = overlap.get((0, p), 0)
        if category in crowd:
            ignored += overlap.get((crowd[category], p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        add(category, 2, 1)


def reference_vpq_sums(videos: Sequence[Sequence[ReferenceFrame]], ks: Sequence[int] = (0, 5, 10, 15),
                       stride: int = 5, gt_area: str = "summed") -> dict[tuple[int, int], tuple]:
    """(k, category) → (iou_sum, tp, fp, fn) over all windows of all videos.

    ``gt_area="summed"``: fresh records per window (the evaluator deep-copies them), i.e.
    the area is the plain sum over the window. ``"legacy"``: one record per (frame, id) for
    the whole video and k, mutated by the windows as the first release's JSON dicts were.
    """
    out: dict[tuple[int, int], tuple] = {}
    for k in ks:
        nframes = k // stride + 1
        sums: dict[int, list] = {}
        for frames in videos:
            records = [{s.id: {"category_id": s.category_id, "iscrowd": s.iscrowd, "area": s.area}
                        for s in f.gt_segments} for f in frames]
            for start in range(0, len(frames) - nframes + 1):
                window = records[start:start + nframes]
                if gt_area == "summed":
                    window = [{sid: dict(r) for sid, r in rec.items()} for rec in window]
                reference_window(frames[start:start + nframes], window, sums)
        out.update({(k, c): tuple(v) for c, v in sums.items()})
    return out


def reference_vpq(sums: Mapping[tuple[int, int], tuple], categories: Mapping[int, bool],
                  ks: Sequence[int] = (0, 5, 10, 15)) -> dict[str, float]:
    """VPQ, VPQ-Th, VPQ-St (fractions) and per-k values from the sums; ``categories``: id → isthing."""
    result: dict[str, float] = {}
    for group, keep in (("all", lambda t: True), ("things", lambda t: t), ("stuff", lambda t: not t)):
        per_k = []
        for k in ks:
            total, n = 0.0, 0
            for category, isthing in categories.items():
                iou, tp, fp, fn = sums.get((k, category), (0.0, 0, 0, 0))
                if not keep(isthing) or tp + fp + fn == 0:
                    continue
                total += iou / (tp + 0.5 * fp + 0.5 * fn)
                n += 1
            per_k.append(total / n if n else float("nan"))
            result[f"{group}_{k}"] = per_k[-1]
        result[group] = float(np.nanmean(per_k)) if not all(np.isnan(per_k)) else float("nan")
    return result
