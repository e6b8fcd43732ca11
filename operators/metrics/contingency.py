"""Per-frame sparse contingency tables: the only thing VPQ and STQ need from the pixels.

Every window of every k (VPQ) and every STQ term is a sum of per-frame counts of
(GT segment id, predicted segment id) pixel pairs, plus per-id areas. So each annotated
frame's two PNGs are decoded once, turned into one :class:`FrameTable` (a few hundred
integers), and the pixels are dropped: memory is one frame plus tables, whatever the
length of the video.

Speed matters (a corpus is millions of 1024×2048 frames). The table is computed without
sorting the pixels: the segment ids are known from the JSON ``segments_info``, so a lookup
table maps every 24-bit id to a dense index, and one ``np.bincount`` over
``gt_index · (n_pred + 1) + pred_index`` counts all pairs. Ids of the PNG that the JSON does
not list hit a sentinel and raise a clear error (the benchmark treats them as errors too).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from operators.errors import FormatMismatchError
from operators.formats.panoptic import VOID, SegmentInfo, decode_panoptic_png

_ID_SPACE = 1 << 24          # COCO-panoptic ids are R + 256·G + 65536·B < 2**24
_UNLISTED = -(1 << 30)        # lookup value of an id the JSON does not list: makes the pair key negative


@dataclass
class SegmentTable:
    """The segments of one side (GT or prediction) of one frame, in ``segments_info`` order.

    All arrays are ``(n,) int64``. ``json_area`` is the JSON ``area`` field (the official
    evaluator uses it for GT tubes), ``pixels`` the count of the id in the PNG.
    """

    ids: np.ndarray
    category: np.ndarray
    iscrowd: np.ndarray
    json_area: np.ndarray
    pixels: np.ndarray

    @classmethod
    def from_segments(cls, segments: Sequence[SegmentInfo], pixels: np.ndarray) -> "SegmentTable":
        return cls(np.array([s.id for s in segments], np.int64), np.array([s.category_id for s in segments], np.int64),
                   np.array([s.iscrowd for s in segments], np.int64), np.array([s.area for s in segments], np.int64),
                   np.asarray(pixels, np.int64))


@dataclass
class FrameTable:
    """Sparse contingency table of one annotated frame.

    ``pair_gt``, ``pair_pred``, ``pair_pixels``: ``(m,) int64`` — for every (GT id, predicted
    id) that overlap, the number of pixels (id 0 = VOID on either side). ``gt`` and ``pred``
    describe the segments of each side.
    """

    frame_index: int
    gt: SegmentTable
    pred: SegmentTable
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    pair_pixels: np.ndarray


def decode_ids(data: bytes, where: str) -> np.ndarray:
    """COCO-panoptic PNG bytes → ``(H, W) uint32`` ids (R + 256·G + 65536·B).

    :func:`operators.formats.panoptic.decode_panoptic_png` (libspng for 8-bit RGB, OpenCV
    otherwise) seen as uint32: ids are < 2**24, so the view changes no value and costs nothing.
    """
    return decode_panoptic_png(data, where).view(np.uint32)


class _IdLookup:
    """A reusable 2**24-entry table id → value (64 MiB, allocated once per thread).

    Entries are set for the ids of one frame, used for one gather and reset, so no
    per-frame allocation of the table is needed. The table is scratch state: one per
    thread (:func:`_id_lookup`), since a thread that shared it would gather another
    frame's indices or find its own ids reset to "unlisted".
    """

    def __init__(self) -> None:
        self.values = np.full(_ID_SPACE, _UNLISTED, np.int32)

    def gather(self, id_map: np.ndarray, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        self.values[ids] = values
        try:
            return np.take(self.values, id_map)
        finally:
            self.values[ids] = _UNLISTED


_per_thread = threading.local()


def _id_lookup() -> _IdLookup:
    """This thread's scratch table, allocated on its first frame."""
    lookup = getattr(_per_thread, "lookup", None)
    if lookup is None:
        lookup = _per_thread.lookup = _IdLookup()
    return lookup


def _listed_ids(segments: Sequence[SegmentInfo], where: str) -> np.ndarray:
    ids = np.array([VOID] + [s.id for s in segments], np.int64)
    if len(np.unique(ids)) != len(ids):
        raise FormatMismatchError(where, "segments_info lists a segment id twice or lists the VOID id 0")
    if ids.max(initial=0) >= _ID_SPACE or ids.min() < 0:
        raise FormatMismatchError(where, f"segment ids must lie in [1, 2**24), got {ids.max()}")
    return ids


def _check_categories(segments: Iterable[SegmentInfo], known: set[int] | None, where: str) -> None:
    if known is None:
        return
    unknown = sorted({s.category_id for s in segments} - known)
    if unknown:
        raise FormatMismatchError(where, f"unknown category ids {unknown}")


def frame_table(frame_index: int, gt_ids: np.ndarray, gt_segments: Sequence[SegmentInfo],
                pred_ids: np.ndarray | None, pred_segments: Sequence[SegmentInfo],
                gt_where: str = "ground truth", pred_where: str = "prediction",
                known_categories: Iterable[int] | None = None) -> FrameTable:
    """Count the (GT id, predicted id) pixel pairs of one frame in one pass.

    ``gt_ids``, ``pred_ids``: ``(H, W)`` integer id maps (< 2**24; 0 = VOID). ``pred_ids``
    ``None`` means "no prediction": every pixel predicted VOID (``--allow-missing``).
    Raises :class:`FormatMismatchError` naming ``gt_where``/``pred_where`` when the sizes
    differ, an id is in the PNG but not in segments_info or the reverse, or a category is
    not in ``known_categories``.
    """
    known = None if known_categories is None else {int(c) for c in known_categories}
    _check_categories(gt_segments, known, gt_where)
    _check_categories(pred_segments, known, pred_where)
    if pred_ids is None:
        pred_ids, pred_segments = np.zeros(gt_ids.shape, np.uint32), []
    if gt_ids.shape != pred_ids.shape:
        raise FormatMismatchError(pred_where, f"prediction size {pred_ids.shape[1]}x{pred_ids.shape[0]} (WxH) differs "
                                              f"from the ground truth {gt_ids.shape[1]}x{gt_ids.shape[0]}")
    gt_listed, pred_listed = _listed_ids(gt_segments, gt_where), _listed_ids(pred_segments, pred_where)
    n_pred = len(pred_listed)
    lookup = _id_lookup()
    # Pair key = gt_index · n_pred + pred_index: the GT lookup holds the scaled index, so the
    # key is one addition. Ids missing from the JSON give a negative key.
    keys = lookup.gather(gt_ids, gt_listed, np.arange(len(gt_listed), dtype=np.int32) * n_pred)
    keys += lookup.gather(pred_ids, pred_listed, np.arange(n_pred, dtype=np.int32))
    if keys.size and keys.min() < 0:
        _raise_unlisted(gt_ids, gt_listed, gt_where)
        _raise_unlisted(pred_ids, pred_listed, pred_where)
    counts = np.bincount(keys.ravel(), minlength=len(gt_listed) * n_pred).reshape(len(gt_listed), n_pred)
    gt_pixels, pred_pixels = counts.sum(axis=1), counts.sum(axis=0)
    _raise_absent(gt_listed, gt_pixels, gt_where)
    _raise_absent(pred_listed, pred_pixels, pred_where)
    rows, cols = np.nonzero(counts)
    return FrameTable(int(frame_index), SegmentTable.from_segments(gt_segments, gt_pixels[1:]),
                      SegmentTable.from_segments(pred_segments, pred_pixels[1:]),
                      gt_listed[rows], pred_listed[cols], counts[rows, cols].astype(np.int64))


def _raise_unlisted(id_map: np.ndarray, listed: np.ndarray, where: str) -> None:
    """The slow path, only on bad input: name the ids that segments_info does not list."""
    extra = np.setdiff1d(np.unique(id_map), listed)
    if extra.size:
        raise FormatMismatchError(where, f"segment ids {extra[:10].tolist()} are in the PNG but not in segments_info")


def _raise_absent(listed: np.ndarray, pixels: np.ndarray, where: str) -> None:
    absent = listed[1:][pixels[1:] == 0]
    if absent.size:
        raise FormatMismatchError(where, f"segment ids {absent[:10].tolist()} are in segments_info but not in the PNG")


# ---------------------------------------------------------------------------- tables as Arrow
_SIDE_FIELDS = ("ids", "category", "iscrowd", "json_area", "pixels")
_PAIR_FIELDS = ("pair_gt", "pair_pred", "pair_pixels")


def frame_tables_schema():
    """One row per frame: its index and every array of its :class:`FrameTable` as a list column."""
    import pyarrow as pa

    lists = [(f"{side}_{name}", pa.list_(pa.int64())) for side in ("gt", "pred") for name in _SIDE_FIELDS]
    return pa.schema([("frame_index", pa.int64()), *lists, *[(name, pa.list_(pa.int64())) for name in _PAIR_FIELDS]])


def frame_tables_to_arrow(tables: Sequence[FrameTable]):
    """:class:`FrameTable` s as one Arrow table (the rows of :func:`frame_tables_schema`): what a
    pipeline stages between the task that has the pixels and the one that scores the video."""
    import pyarrow as pa

    columns = {"frame_index": [t.frame_index for t in tables]}
    for side in ("gt", "pred"):
        for name in _SIDE_FIELDS:
            columns[f"{side}_{name}"] = [getattr(getattr(t, side), name) for t in tables]
    for name in _PAIR_FIELDS:
        columns[name] = [getattr(t, name) for t in tables]
    return pa.table(columns, schema=frame_tables_schema())


def frame_tables_from_arrow(table) -> list[FrameTable]:
    """The :class:`FrameTable` s of :func:`frame_tables_to_arrow`, in the table's row order."""
    def arrays(name: str) -> list[np.ndarray]:
        column = table[name].combine_chunks()
        values = column.values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        offsets = column.offsets.to_numpy()
        return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]

    sides = {side: [arrays(f"{side}_{name}") for name in _SIDE_FIELDS] for side in ("gt", "pred")}
    pairs = [arrays(name) for name in _PAIR_FIELDS]
    return [FrameTable(int(index), SegmentTable(*(a[i] for a in sides["gt"])),
                       SegmentTable(*(a[i] for a in sides["pred"])), *(a[i] for a in pairs))
            for i, index in enumerate(table["frame_index"].to_pylist())]
