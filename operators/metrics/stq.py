"""Segmentation and Tracking Quality (STQ).

Weber et al., "STEP: Segmenting and Tracking Every Pixel", NeurIPS 2021 Datasets and
Benchmarks, Sec. 4: STQ = sqrt(AQ × SQ) with

* AQ (Eq. 2) = 1/|gt tubes| · Σ_g 1/|g| · Σ_{p ∩ g ≠ ∅} TPA(p, g) · IoU_id(p, g) over the
  ``thing`` pixels, per sequence, tubes of different sequences never matching;
* SQ (Eq. 3) = mean class IoU of the semantic labels (the code calls it ``IoU``).

The arithmetic is that of the authors' numpy implementation (deeplab2,
``evaluation/numpy/segmentation_and_tracking_quality.py``) and so is the life cycle
(``update`` per frame — deeplab2's ``update_state`` —, ``merge``, ``result``; ``stats()``
gives the per-sequence sums that travel between workers, :class:`StqStats`, which merge too): labels are
``semantic · label_divisor + instance``; a ground-truth ``thing`` pixel with instance 0 is
*crowd*: it is left out of the GT tubes and the predictions on it are not counted; the
ignore label's GT pixels are dropped from the class IoU (a prediction of the ignore
label still counts against the GT class, and the ignore class enters the mean when
predicted, exactly as there). Counts are int64 (deeplab2's 2023 version accumulates
float32, which rounds above 2**24 pixels per tube).

Internally a label is the pair (semantic, instance), packed as ``semantic · 2**32 +
instance``, so panoptic frames with any segment ids convert without a label divisor:
:meth:`STQuality.update_from_table` reads a :class:`FrameTable`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from operators.metrics.contingency import FrameTable

_EPSILON = 1e-15
_SHIFT = 32
STQ_SCHEMA = pa.schema([("video_id", pa.string()), ("frames", pa.int64()), ("aq_sum", pa.float64()),
                        ("num_tubes", pa.int64()), ("confusion", pa.list_(pa.int64()))])


@dataclass
class _Sequence:
    """Sums of one sequence: semantic confusion (GT rows × predicted columns) and
    per-tube areas and intersections keyed by packed labels."""

    confusion: np.ndarray
    gt: dict[int, int] = field(default_factory=dict)
    pred: dict[int, int] = field(default_factory=dict)
    inter: dict[tuple[int, int], int] = field(default_factory=dict)
    frames: int = 0


def _accumulate(target: dict, keys: Iterable, counts: Iterable[int]) -> None:
    for key, count in zip(keys, counts):
        target[key] = target.get(key, 0) + int(count)


class STQuality:
    """STQ accumulated frame by frame, mergeable across workers.

    ``num_classes``: semantic classes 0..num_classes-1; ``things``: the thing classes;
    ``ignore_label``: semantic label of unlabelled pixels; ``label_divisor``: for
    :meth:`update` (label = semantic · divisor + instance).
    """

    def __init__(self, num_classes: int, things: Sequence[int], ignore_label: int = 255, label_divisor: int = 65536):
        if ignore_label < 0 or label_divisor < 1:  # labels are semantic · divisor + instance, all >= 0
            raise ValueError(f"ignore_label must be >= 0 and label_divisor >= 1, got {ignore_label} and {label_divisor}")
        self.num_classes = int(num_classes)
        self.things = np.array(sorted(int(t) for t in things), np.int64)
        self.ignore_label = int(ignore_label)
        self.label_divisor = int(label_divisor)
        # deeplab2: an ignore label outside the classes gets its own row/column (num_classes).
        self.size = self.num_classes + 1 if self.ignore_label >= self.num_classes else self.num_classes
        self.include = np.array([c for c in range(self.num_classes) if c != self.ignore_label], np.int64)
        self.sequences: dict[str, _Sequence] = {}

    # -- accumulation ---------------------------------------------------------------------
    def update(self, y_true: np.ndarray, y_pred: np.ndarray, sequence_id: object = 0) -> None:
        """One frame as label maps ``(H, W)`` int (semantic · label_divisor + instance)."""
        y_true, y_pred = np.asarray(y_true, np.int64).ravel(), np.asarray(y_pred, np.int64).ravel()
        if y_true.shape != y_pred.shape:
            raise ValueError(f"label maps differ in size: {y_true.shape} vs {y_pred.shape}")
        d = self.label_divisor
        gt = ((y_true // d) << _SHIFT) + y_true % d
        pred = ((y_pred // d) << _SHIFT) + y_pred % d
        pairs, counts = np.unique(np.stack([gt, pred]), axis=1, return_counts=True)
        self.update_from_labels(pairs[0], pairs[1], counts, sequence_id)

    def update_from_table(self, table: FrameTable, sequence_id: object) -> None:
        """One frame from its contingency table: semantic = category (VOID → ignore label),
        instance = the segment id for non-crowd things, 0 for stuff and crowd."""
        things = set(self.things.tolist())

        def labels(side, pair_ids: np.ndarray) -> np.ndarray:
            label = {0: self.ignore_label << _SHIFT}
            for sid, cat, crowd in zip(side.ids.tolist(), side.category.tolist(), side.iscrowd.tolist()):
                label[sid] = (cat << _SHIFT) + (sid if cat in things and crowd != 1 else 0)
            return np.array([label[i] for i in pair_ids.tolist()], np.int64)

        self.update_from_labels(labels(table.gt, table.pair_gt), labels(table.pred, table.pair_pred),
                                table.pair_pixels, sequence_id)

    def update_from_labels(self, gt: np.ndarray, pred: np.ndarray, pixels: np.ndarray, sequence_id: object) -> None:
        """One frame as sparse pairs: packed GT label, packed predicted label, pixel count (``(m,) int64``)."""
        key = str(sequence_id)
        seq = self.sequences.get(key)
        if seq is None:
            seq = self.sequences[key] = _Sequence(np.zeros((self.size, self.size), np.int64))
        seq.frames += 1
        gt, pred, pixels = (np.asarray(a, np.int64) for a in (gt, pred, pixels))
        sem_gt, sem_pred = self._semantic(gt >> _SHIFT), self._semantic(pred >> _SHIFT)
        np.add.at(seq.confusion, (sem_gt, sem_pred), pixels)
        gt_thing, pred_thing = np.isin(sem_gt, self.things), np.isin(sem_pred, self.things)
        crowd = gt_thing & ((gt & ((1 << _SHIFT) - 1)) == 0)
        gt_mask, pred_mask = gt_thing & ~crowd, pred_thing & ~crowd
        _accumulate(seq.gt, gt[gt_mask].tolist(), pixels[gt_mask].tolist())
        _accumulate(seq.pred, pred[pred_mask].tolist(), pixels[pred_mask].tolist())
        both = gt_mask & pred_mask
        _accumulate(seq.inter, zip(gt[both].tolist(), pred[both].tolist()), pixels[both].tolist())

    def _semantic(self, semantic: np.ndarray) -> np.ndarray:
        if self.ignore_label > self.num_classes:
            semantic = np.where(semantic == self.ignore_label, self.num_classes, semantic)
        bad = (semantic < 0) | (semantic >= self.size)
        if np.any(bad):
            raise ValueError(f"semantic labels {np.unique(semantic[bad])[:10].tolist()} are outside "
                             f"0..{self.num_classes - 1} and not the ignore label {self.ignore_label}")
        return semantic

    def merge(self, others: Iterable["STQuality"]) -> None:
        """Add the sums of ``others``. deeplab2 refuses a sequence present on both sides;
        here its counts add, so one long sequence may be split across workers."""
        for other in others:
            for key, seq in other.sequences.items():
                mine = self.sequences.get(key)
                if mine is None:
                    mine = self.sequences[key] = _Sequence(np.zeros((self.size, self.size), np.int64))
                mine.confusion += seq.confusion
                mine.frames += seq.frames
                _accumulate(mine.gt, seq.gt.keys(), seq.gt.values())
                _accumulate(mine.pred, seq.pred.keys(), seq.pred.values())
                _accumulate(mine.inter, seq.inter.keys(), seq.inter.values())

    # -- results --------------------------------------------------------------------------
    def _aq_sum(self, seq: _Sequence) -> float:
        """Σ over GT tubes g of 1/|g| · Σ_p TPA · TPA / (TPA + FPA + FNA)  (STEP Eq. 2, before 1/|tubes|)."""
        inner: dict[int, float] = {}
        for (g, p), tpa in seq.inter.items():
            fpa, fna = seq.pred[p] - tpa, seq.gt[g] - tpa
            inner[g] = inner.get(g, 0.0) + tpa * (tpa / (tpa + fpa + fna))
        return float(sum(1.0 / size * inner.get(g, 0.0) for g, size in seq.gt.items()))

    def stats(self) -> "StqStats":
        """Per-sequence sums that are enough for the result: what travels between workers."""
        rows = [(key, seq.frames, self._aq_sum(seq), len(seq.gt), seq.confusion.ravel().tolist())
                for key, seq in self.sequences.items()]
        return StqStats(self.size, self.include, pa.Table.from_pylist(
            [dict(zip(STQ_SCHEMA.names, r)) for r in rows], schema=STQ_SCHEMA))

    def result(self) -> dict:
        """deeplab2's result dict: STQ, AQ, IoU and their per-sequence lists."""
        return self.stats().result()


@dataclass
class StqStats:
    """Per-sequence STQ sums as Arrow rows (video_id, frames, aq_sum, num_tubes, confusion).

    Merging concatenates sequences (a sequence must be complete: AQ is not additive
    within a sequence); the dataset result sums aq_sum, num_tubes and confusion.
    """

    size: int
    include: np.ndarray
    table: pa.Table

    @classmethod
    def merge(cls, parts: Sequence["StqStats"], keep_videos: bool = True) -> "StqStats":
        """The parts' sequences together. ``keep_videos=False`` sums every sequence into one row
        ``"*"`` whose STQ/AQ/SQ equal those of the parts (AQ = Σ aq_sum / Σ num_tubes, SQ from
        Σ confusion): the dataset totals, what a reduce passes on — as :meth:`VpqStats.merge`."""
        table = pa.concat_tables([p.table for p in parts])
        if keep_videos:
            ids = table.column("video_id").to_pylist()
            if len(set(ids)) != len(ids):
                raise ValueError("STQ stats of the same sequence cannot be merged after stats(); "
                                 "merge the STQuality states instead")
            return cls(parts[0].size, parts[0].include, table)
        confusion = np.zeros(parts[0].size * parts[0].size, np.int64)
        for flat in table.column("confusion").to_pylist():
            confusion += np.array(flat, np.int64)
        row = {"video_id": "*", "frames": int(pa.compute.sum(table.column("frames")).as_py() or 0),
               "aq_sum": float(np.sum(table.column("aq_sum").to_numpy())),
               "num_tubes": int(pa.compute.sum(table.column("num_tubes")).as_py() or 0),
               "confusion": confusion.tolist()}
        return cls(parts[0].size, parts[0].include, pa.Table.from_pylist([row], schema=STQ_SCHEMA))

    def _confusions(self) -> list[np.ndarray]:
        rows = []
        for flat in self.table.column("confusion").to_pylist():
            confusion = np.array(flat, np.int64).reshape(self.size, self.size)
            kept = np.zeros_like(confusion)
            kept[self.include, :] = confusion[self.include, :]  # GT ignore rows removed
            rows.append(kept)
        return rows

    @staticmethod
    def _mean_iou(confusion: np.ndarray) -> float:
        intersections = confusion.diagonal()
        unions = confusion.sum(axis=0) + confusion.sum(axis=1) - intersections
        n = np.count_nonzero(unions)
        ious = intersections.astype(np.float64) / np.maximum(unions, _EPSILON).astype(np.float64)
        return float(np.sum(ious) / n) if n else float("nan")

    def result(self) -> dict:
        aq_sum = np.array(self.table.column("aq_sum").to_pylist(), np.float64)
        tubes = np.array(self.table.column("num_tubes").to_pylist(), np.int64)
        confusions = self._confusions()
        aq = float(np.sum(aq_sum) / np.maximum(np.sum(tubes), _EPSILON))
        total = np.sum(confusions, axis=0) if confusions else np.zeros((self.size, self.size), np.int64)
        iou = self._mean_iou(total)
        aq_per_seq = aq_sum / np.maximum(tubes, _EPSILON)
        iou_per_seq = np.array([self._mean_iou(c) for c in confusions], np.float64)
        return {"STQ": float(np.sqrt(aq * iou)), "AQ": aq, "IoU": iou,
                "STQ_per_seq": np.sqrt(aq_per_seq * iou_per_seq), "AQ_per_seq": aq_per_seq,
                "IoU_per_seq": iou_per_seq, "ID_per_seq": self.table.column("video_id").to_pylist(),
                "Length_per_seq": self.table.column("frames").to_pylist()}
