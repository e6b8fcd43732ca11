"""Per-frame sparse contingency tables: the only thing VPQ and STQ need from the pixels.

Every window of every k (VPQ) and every STQ term is a sum of per-frame counts of
(GT segment id, predicted segment id) pixel pairs, plus per-id areas. So each annotated
frame's two PNGs are decoded once, turned into one :class:`FrameTable` (a few hundred
integers), and the pixels are dropped: memory is one frame plus tables, whatever the
length of the video.

Speed matters (a corpus is millions of 1024×2048 frames, and decoding the two PNGs is
already most of a frame's cost). The table is counted over *runs*, not pixels: a panoptic
id map is piecewise constant, so in raster order the (GT id, predicted id) pair changes at
~10⁴ of 2·10⁶ pixels. Two comparisons with the next pixel find where a run starts; only the
run starts are looked up (the segment ids are known from the JSON ``segments_info``, sorted
once per frame) and one weighted ``np.bincount`` over ``gt_index · n_pred + pred_index``
counts every pair, each run by its length. Ids of the PNG that the JSON does not list are
found among the run starts (every pixel's id is its run's first id) and raise a clear error
(the benchmark treats them as errors too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from operators.errors import FormatMismatchError
from operators.formats.panoptic import VOID, SegmentInfo, decode_panoptic_png

_ID_SPACE = 1 << 24          # COCO-panoptic ids are R + 256·G + 65536·B < 2**24


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


def _run_starts(gt_ids: np.ndarray, pred_ids: np.ndarray) -> np.ndarray:
    """Raster positions where the (GT id, predicted id) pair differs from the pixel before
    (position 0 included): one run of equal pairs starts at each."""
    gt_flat, pred_flat = gt_ids.reshape(-1), pred_ids.reshape(-1)
    change = np.empty(gt_flat.size, bool)
    change[:1] = True
    np.not_equal(gt_flat[1:], gt_flat[:-1], out=change[1:])
    change[1:] |= pred_flat[1:] != pred_flat[:-1]
    return np.flatnonzero(change)


def _dense_index(ids: np.ndarray, listed: np.ndarray, where: str) -> np.ndarray:
    """Each of ``ids`` as its position in ``listed``; an id that is not listed raises,
    naming up to ten of them."""
    order = np.argsort(listed, kind="stable")
    sorted_ids = listed[order]
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    unlisted = sorted_ids[at] != ids
    if unlisted.any():
        extra = np.unique(ids[unlisted])
        raise FormatMismatchError(where, f"segment ids {extra[:10].tolist()} are in the PNG but not in segments_info")
    return order[at]


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
    starts = _run_starts(gt_ids, pred_ids)
    lengths = np.diff(starts, append=gt_ids.size)
    keys = _dense_index(gt_ids.reshape(-1)[starts], gt_listed, gt_where) * n_pred
    keys += _dense_index(pred_ids.reshape(-1)[starts], pred_listed, pred_where)
    # Weights make the sums float64: exact, since a count is at most the pixels of a frame (< 2**53).
    counts = np.bincount(keys, weights=lengths, minlength=len(gt_listed) * n_pred).astype(np.int64)
    counts = counts.reshape(len(gt_listed), n_pred)
    gt_pixels, pred_pixels = counts.sum(axis=1), counts.sum(axis=0)
    _raise_absent(gt_listed, gt_pixels, gt_where)
    _raise_absent(pred_listed, pred_pixels, pred_where)
    rows, cols = np.nonzero(counts)
    return FrameTable(int(frame_index), SegmentTable.from_segments(gt_segments, gt_pixels[1:]),
                      SegmentTable.from_segments(pred_segments, pred_pixels[1:]),
                      gt_listed[rows], pred_listed[cols], counts[rows, cols].astype(np.int64))


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
