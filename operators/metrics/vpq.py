"""Video Panoptic Quality (VPQ) from per-frame contingency tables.

Kim, Woo, Lee, Kweon, "Video Panoptic Segmentation", CVPR 2020, Sec. 4 (Eq. 2):
for a temporal window of ``k`` frames (``k/λ + 1`` consecutive annotated frames, λ the
annotation stride), a segment id is one *tube* through the window; tubes match when
``IoU > 0.5``; per category ``VPQ^k_c = Σ IoU(u, û) / (|TP| + ½|FP| + ½|FN|)`` summed over
all windows of all videos; ``VPQ^k`` is the mean over categories and VPQ the mean over
k ∈ {0, 5, 10, 15}. PQ (Kirillov et al., CVPR 2019, Eq. 1) is VPQ^0.

The window rules follow the authors' evaluator (mcahny/vps, ``tools/eval_vpq.py``) detail
for detail; ``operators/metrics/README.md`` lists each one and where it departs from the
paper's prose. Windows are computed from :class:`FrameTable` s, never from pixels:
intersections and areas of a tube are sums of per-frame counts.

Statistics are sums (TrackEval style): a :class:`PqSums` per category and k; :class:`VpqStats`
holds them as rows ``(video_id, k, category_id, iou_sum, tp, fp, fn)``, merges by adding, and
:func:`quality` derives every ratio from the sums, per video or for the dataset. The life
cycle is that of both metrics (:mod:`operators.metrics.stq` too): ``update`` per frame,
``stats()`` for the sums that travel, ``merge`` of sums, ``result`` at the end.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from operators.errors import FormatMismatchError
from operators.formats.categories import Category
from operators.metrics.contingency import FrameTable

DEFAULT_KS: tuple[int, ...] = (0, 5, 10, 15)
DEFAULT_STRIDE = 5
GtAreaRule = Literal["summed", "legacy"]
GT_AREA_RULES: tuple[str, ...] = ("summed", "legacy")

VPQ_SCHEMA = pa.schema([("video_id", pa.string()), ("k", pa.int64()), ("category_id", pa.int64()),
                        ("iou_sum", pa.float64()), ("tp", pa.int64()), ("fp", pa.int64()), ("fn", pa.int64())])


@dataclass(frozen=True)
class PqSums:
    """The sums PQ and VPQ are ratios of, for one category (at one window size k): the IoUs of
    the matched pairs, true positives, false positives, false negatives. Sums add; ratios are
    taken once, from the sums (:func:`quality`)."""

    iou_sum: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: "PqSums") -> "PqSums":
        return PqSums(self.iou_sum + other.iou_sum, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def counted(self) -> bool:
        """Whether the category enters the mean over categories (TP + FP + FN > 0)."""
        return self.tp + self.fp + self.fn > 0


_SUM_FIELDS = tuple(f.name for f in fields(PqSums))
_PAIR_SHIFT = 24  # ids < 2**24, so gt << 24 | pred is a unique int64 pair key


def window_frames(k: int, stride: int) -> int:
    """Annotated frames in a window of ``k`` frames at annotation stride ``stride``: k/λ + 1."""
    if k < 0 or stride < 1 or k % stride:
        raise ValueError(f"window k={k} is not a multiple of the annotation stride {stride}")
    return k // stride + 1


@dataclass
class _Tubes:
    """Tubes of one side in a window, in order of first appearance. ``(n,) int64`` each."""

    ids: np.ndarray
    category: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray

    def index(self, ids: np.ndarray) -> np.ndarray:
        order = np.argsort(self.ids, kind="stable")
        return order[np.searchsorted(self.ids, ids, sorter=order)]


def _first_appearance(frames: Sequence[FrameTable], side: str) -> dict[int, tuple[int, int, int]]:
    """id → (category, iscrowd, window position of its first frame), in order of first
    appearance (frame order, then ``segments_info`` order), as the evaluator's dict fills."""
    first: dict[int, tuple[int, int, int]] = {}
    for position, table in enumerate(frames):
        seg = getattr(table, side)
        for sid, cat, crowd in zip(seg.ids.tolist(), seg.category.tolist(), seg.iscrowd.tolist()):
            if sid not in first:
                first[sid] = (cat, crowd, position)
    return first


def _gt_tubes(frames: Sequence[FrameTable], positions: Sequence[int], rule: GtAreaRule,
              stored: dict[tuple[int, int], int]) -> _Tubes:
    """GT tubes; areas from the JSON ``area`` fields.

    ``rule="summed"``: area = Σ of the JSON areas over the window: the paper's definition,
    and the benchmark evaluator's (mcahny/vps ``eval_vpq.py`` deep-copies each frame's
    ``segments_info`` record per window).
    ``rule="legacy"``: the evaluator's first release, whose records were shared between
    windows: it added the later frames' areas *into the record of the first frame* and kept
    that record for the next windows, so when a tube's first frame is the same in several
    windows (the object enters after the window start) its area is accumulated again.
    ``stored`` is that record, keyed (video frame position, id), kept by the caller across
    the windows of one k.
    """
    first = _first_appearance(frames, "gt")
    area_of = [dict(zip(t.gt.ids.tolist(), t.gt.json_area.tolist())) for t in frames]
    areas = {}
    for sid, (_, _, start) in first.items():
        present = [(positions[p], area_of[p][sid]) for p in range(start, len(frames)) if sid in area_of[p]]
        if rule == "summed":
            areas[sid] = sum(a for _, a in present)
        else:
            (first_position, first_area), later = present[0], present[1:]
            total = stored.get((first_position, sid), first_area) + sum(stored.get((q, sid), a) for q, a in later)
            stored[(first_position, sid)] = total
            areas[sid] = total
    ids = np.array(list(first), np.int64)
    return _Tubes(ids, np.array([c for c, _, _ in first.values()], np.int64),
                  np.array([z for _, z, _ in first.values()], np.int64), np.array([areas[i] for i in first], np.int64))


def _pred_tubes(frames: Sequence[FrameTable]) -> _Tubes:
    """Predicted tubes; areas are PNG pixel counts summed over the window."""
    first = _first_appearance(frames, "pred")
    ids = np.array(list(first), np.int64)
    area = np.zeros(len(ids), np.int64)
    tubes = _Tubes(ids, np.array([c for c, _, _ in first.values()], np.int64), np.zeros(len(ids), np.int64), area)
    for table in frames:
        if table.pred.ids.size:
            np.add.at(area, tubes.index(table.pred.ids), table.pred.pixels)
    return tubes


def _window_pairs(frames: Sequence[FrameTable]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt ids, pred ids, pixels) of the window: per-frame pairs summed by (gt, pred), sorted."""
    gt = np.concatenate([t.pair_gt for t in frames])
    pred = np.concatenate([t.pair_pred for t in frames])
    keys, inverse = np.unique((gt << _PAIR_SHIFT) | pred, return_inverse=True)
    pixels = np.zeros(len(keys), np.int64)
    np.add.at(pixels, inverse.ravel(), np.concatenate([t.pair_pixels for t in frames]))
    return keys >> _PAIR_SHIFT, keys & ((1 << _PAIR_SHIFT) - 1), pixels


def window_counts(frames: Sequence[FrameTable], positions: Sequence[int] | None = None, rule: GtAreaRule = "summed",
                  stored: dict[tuple[int, int], int] | None = None, where: str = "window"
                  ) -> dict[int, PqSums]:
    """Per category the :class:`PqSums` of one window of consecutive annotated frames.

    Matching (Kim et al. Sec. 4; evaluator): same category, GT not crowd, and
    IoU = I / (|pred| + |gt| − I − |pred ∩ VOID|) > 0.5 strictly. An unmatched prediction is
    not a FP when (|pred ∩ VOID| + |pred ∩ crowd of its category|) / |pred| > 0.5, the crowd
    tube being the last crowd tube of that category in order of first appearance.
    """
    positions = list(range(len(frames))) if positions is None else list(positions)
    stored = {} if stored is None else stored
    gt_tubes, pred_tubes = _gt_tubes(frames, positions, rule, stored), _pred_tubes(frames)
    pair_gt, pair_pred, inter = _window_pairs(frames)
    void = np.zeros(len(pred_tubes.ids), np.int64)
    on_void = (pair_gt == 0) & (pair_pred != 0)
    void[pred_tubes.index(pair_pred[on_void])] = inter[on_void]

    both = (pair_gt != 0) & (pair_pred != 0)
    g, p, i = gt_tubes.index(pair_gt[both]), pred_tubes.index(pair_pred[both]), inter[both]
    candidate = (gt_tubes.iscrowd[g] != 1) & (gt_tubes.category[g] == pred_tubes.category[p])
    union = pred_tubes.area[p] + gt_tubes.area[g] - i - void[p]
    if np.any(candidate & (i > union)):
        raise FormatMismatchError(where, "a tube IoU exceeds 1: the GT JSON `area` fields disagree with the PNG pixels")
    matched = candidate & (2 * i > union)  # IoU > 0.5, strictly, in integers
    iou = i[matched] / union[matched]
    out: dict[int, PqSums] = {}

    def add(category: int, sums: PqSums) -> None:
        out[int(category)] = out.get(int(category), PqSums()) + sums

    for category, value in zip(gt_tubes.category[g[matched]].tolist(), iou.tolist()):
        add(category, PqSums(iou_sum=value, tp=1))
    gt_matched = np.zeros(len(gt_tubes.ids), bool)
    gt_matched[g[matched]] = True
    pred_matched = np.zeros(len(pred_tubes.ids), bool)
    pred_matched[p[matched]] = True

    crowd_of_category: dict[int, int] = {}
    for n, (category, crowd) in enumerate(zip(gt_tubes.category.tolist(), gt_tubes.iscrowd.tolist())):
        if gt_matched[n]:
            continue
        if crowd == 1:
            crowd_of_category[category] = n  # the last one wins, as in the evaluator's dict
        else:
            add(category, PqSums(fn=1))
    crowd_inter = {(int(a), int(b)): int(c) for a, b, c in zip(g, p, i) if gt_tubes.iscrowd[a] == 1}
    for n, (category, area) in enumerate(zip(pred_tubes.category.tolist(), pred_tubes.area.tolist())):
        if pred_matched[n]:
            continue
        ignored = int(void[n]) + crowd_inter.get((crowd_of_category.get(category, -1), n), 0)
        if 2 * ignored > area:  # (VOID + crowd) / area > 0.5
            continue
        add(category, PqSums(fp=1))
    return out


class VideoVpq:
    """Streaming VPQ statistics of one video: feed its annotated frames' tables in order.

    Keeps the last ``max(k)/λ + 1`` tables only; each new frame closes one window per k.
    """

    def __init__(self, video_id: str, ks: Sequence[int] = DEFAULT_KS, stride: int = DEFAULT_STRIDE,
                 gt_area: GtAreaRule = "summed"):
        if gt_area not in GT_AREA_RULES:
            raise ValueError(f"gt_area must be one of {GT_AREA_RULES}, got {gt_area!r}")
        self.video_id = str(video_id)
        self.nframes = {int(k): window_frames(int(k), stride) for k in ks}
        self.gt_area = gt_area
        self._recent: deque[FrameTable] = deque(maxlen=max(self.nframes.values()))
        self._count = 0
        self._stored: dict[int, dict[tuple[int, int], int]] = {k: {} for k in self.nframes}
        self._sums: dict[tuple[int, int], PqSums] = {}

    def update(self, table: FrameTable) -> None:
        """Add the next annotated frame's table (frames in order)."""
        self._recent.append(table)
        self._count += 1
        for k, n in self.nframes.items():
            if len(self._recent) < n:
                continue
            start = self._count - n
            frames = list(self._recent)[-n:]
            stored = self._stored[k]
            for key in [key for key in stored if key[0] < start]:
                del stored[key]  # frames that left every later window of this k
            counts = window_counts(frames, range(start, self._count), self.gt_area, stored,
                                   where=f"video {self.video_id} frames {frames[0].frame_index}..{frames[-1].frame_index}")
            for category, sums in counts.items():
                self._sums[(k, category)] = self._sums.get((k, category), PqSums()) + sums

    def stats(self) -> "VpqStats":
        """The video's sums as mergeable rows: what travels between workers."""
        rows = [(self.video_id, k, c, s.iou_sum, s.tp, s.fp, s.fn) for (k, c), s in sorted(self._sums.items())]
        return VpqStats.from_rows(rows)

    def result(self, categories: Mapping[int, Category]) -> "VpqResult":
        return self.stats().result(categories, tuple(self.nframes))


@dataclass
class VpqStats:
    """Mergeable VPQ sums: an Arrow table with rows (video_id, k, category_id, iou_sum, tp, fp, fn)."""

    table: pa.Table = field(default_factory=lambda: VPQ_SCHEMA.empty_table())

    @classmethod
    def from_rows(cls, rows: Iterable[tuple]) -> "VpqStats":
        columns = list(zip(*rows)) or [[] for _ in VPQ_SCHEMA]
        return cls(pa.Table.from_arrays([pa.array(list(c), f.type) for c, f in zip(columns, VPQ_SCHEMA)],
                                        schema=VPQ_SCHEMA))

    @classmethod
    def merge(cls, parts: Iterable["VpqStats"], keep_videos: bool = True) -> "VpqStats":
        """Sum of the parts (associative, commutative). ``keep_videos=False`` sums over
        videos too (video_id becomes ``"*"``): the dataset totals, what a reduce passes on."""
        table = pa.concat_tables([p.table for p in parts] + [VPQ_SCHEMA.empty_table()])
        if not keep_videos:
            table = table.set_column(0, "video_id", pa.array(["*"] * table.num_rows, pa.string()))
        keys = ["video_id", "k", "category_id"]
        # one thread: the float sums then add in row order, the same in every run
        summed = table.group_by(keys, use_threads=False).aggregate([(f, "sum") for f in _SUM_FIELDS])
        summed = summed.rename_columns([c.removesuffix("_sum") for c in summed.column_names])
        order = pa.compute.sort_indices(summed, [(key, "ascending") for key in keys])
        return cls(summed.take(order).select(VPQ_SCHEMA.names).cast(VPQ_SCHEMA))

    def sums(self) -> dict[tuple[int, int], PqSums]:
        """(k, category_id) → :class:`PqSums`, summed over videos."""
        out: dict[tuple[int, int], PqSums] = {}
        for row in self.table.to_pylist():
            key = (row["k"], row["category_id"])
            out[key] = out.get(key, PqSums()) + PqSums(*(row[name] for name in _SUM_FIELDS))
        return out

    def result(self, categories: Mapping[int, Category], ks: Sequence[int] = DEFAULT_KS) -> "VpqResult":
        """Every ratio from the sums: per class, mean over categories with TP+FP+FN > 0 (All,
        Things, Stuff), then the mean over k (evaluator: ``pq_average`` and the final mean)."""
        return _vpq_result(self.sums(), categories, ks)


def quality(iou_sum, tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PQ, SQ, RQ) from sums, elementwise: PQ = IoU_sum / (TP + FP/2 + FN/2), SQ = IoU_sum / TP
    (0 without TP), RQ = TP / (TP + FP/2 + FN/2) (Kirillov et al. Eq. 1; VPQ uses the same)."""
    iou_sum, tp, fp, fn = (np.asarray(x, np.float64) for x in (iou_sum, tp, fp, fn))
    denominator = tp + 0.5 * fp + 0.5 * fn
    with np.errstate(divide="ignore", invalid="ignore"):
        pq = np.where(denominator > 0, iou_sum / denominator, 0.0)
        sq = np.where(tp > 0, iou_sum / tp, 0.0)
        rq = np.where(denominator > 0, tp / denominator, 0.0)
    return pq, sq, rq


@dataclass
class ClassQuality:
    """One category at one window size k: its sums over all windows of all videos and the
    ratios derived from them (:func:`quality`; fractions, 0 where undefined)."""

    k: int
    category_id: int
    name: str
    isthing: bool
    iou_sum: float
    tp: int
    fp: int
    fn: int
    pq: float
    sq: float
    rq: float


@dataclass
class VpqResult:
    """``per_k[k][group]`` with group ∈ {all, things, stuff} → {pq, sq, rq, n}; ``vpq*`` the
    means over k. Values are fractions (the papers print 100×). NaN where no category counts."""

    per_k: dict[int, dict[str, dict[str, float]]]
    per_class: list[ClassQuality]
    vpq: float
    vpq_thing: float
    vpq_stuff: float


def _vpq_result(sums: Mapping[tuple[int, int], PqSums], categories: Mapping[int, Category],
                ks: Sequence[int]) -> VpqResult:
    per_k: dict[int, dict[str, dict[str, float]]] = {}
    per_class: list[ClassQuality] = []
    for k in ks:
        rows = [(c, sums.get((k, c.id), PqSums())) for c in categories.values()]
        pq, sq, rq = quality(*zip(*[(v.iou_sum, v.tp, v.fp, v.fn) for _, v in rows])) if rows else ([], [], [])
        counted = np.array([v.counted for _, v in rows], bool)
        isthing = np.array([c.isthing for c, _ in rows], bool)
        groups = {}
        for name, member in (("all", np.ones(len(rows), bool)), ("things", isthing), ("stuff", ~isthing)):
            chosen = counted & member
            n = int(chosen.sum())
            groups[name] = {"pq": float(np.mean(pq[chosen])) if n else float("nan"),
                            "sq": float(np.mean(sq[chosen])) if n else float("nan"),
                            "rq": float(np.mean(rq[chosen])) if n else float("nan"), "n": n}
        per_k[k] = groups
        per_class += [ClassQuality(k, c.id, c.name, c.isthing, float(v.iou_sum), int(v.tp), int(v.fp), int(v.fn),
                                   float(a), float(b), float(r)) for (c, v), a, b, r in zip(rows, pq, sq, rq)]

    def mean_over_k(group: str) -> float:
        values = [per_k[k][group]["pq"] for k in ks if not np.isnan(per_k[k][group]["pq"])]
        return float(np.mean(values)) if values else float("nan")

    return VpqResult(per_k, per_class, mean_over_k("all"), mean_over_k("things"), mean_over_k("stuff"))
