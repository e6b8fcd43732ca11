"""Pure functions that turn (previous tracks, current segments) into affinity matrices.

Segments enter as *compact index maps*: ``(H, W)`` uint8 (K < 255) or uint16 arrays whose value ``k ∈ 1..K``
is the k-th segment of the frame and 0 is VOID (or "not a tracked segment"). Keeping the
values small is what lets one ``np.bincount`` over a combined key give the joint histogram of
*all* pairs at once (HybridTracker's pixel tracker needs every warped-previous × current
overlap): one pass over the pixels, instead of one pass per pair of masks.

Every matrix is ``(tracks, segments)``: rows are previous tracks, columns current segments.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

MAX_SEGMENTS = np.iinfo(np.uint16).max - 1
_EXACT_FLOAT32_COUNT = 1 << 24
_RELATIVE_MAP = getattr(cv2, "WARP_RELATIVE_MAP", None)


@functools.lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> np.ndarray:
    """``(H, W, 2) float32`` pixel coordinates (x, y); cached per frame size, read-only."""
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    grid = np.stack([xs, ys], axis=-1)
    grid.setflags(write=False)
    return grid


def warp_segments(previous_index: np.ndarray, flow: np.ndarray | None) -> np.ndarray:
    """Move the previous frame's segments into the current frame (backward warping).

    ``previous_index``: ``(H, W)`` uint8/uint16 compact index map of frame t-1.
    ``flow``: ``(H, W, 2) float32`` flow from frame t to frame t-1 (x, y displacements), or
    ``None`` for no motion. Pixel x of frame t takes the label at x + flow(x) of frame t-1
    (nearest neighbour: labels are not interpolated); pixels that come from outside the frame
    get 0. Returns the same dtype. Backward warping leaves no holes, unlike forward splatting.
    """
    if flow is None:
        return previous_index
    if _RELATIVE_MAP is not None:
        # OpenCV ≥ 4.10 adds the pixel's own position to the map itself: the same float32 sum
        # and rounding as ``flow + grid`` (tests/test_association_fast_paths.py), without
        # writing the 16 MB map of absolute coordinates at 1024×2048.
        return cv2.remap(previous_index, flow, None, interpolation=cv2.INTER_NEAREST | _RELATIVE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warp_segments_absolute(previous_index, flow)


def warp_segments_absolute(previous_index: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """:func:`warp_segments` with the absolute map ``flow + pixel grid`` (OpenCV < 4.10, and the
    oracle of the relative map's test)."""
    height, width = previous_index.shape
    coords = flow + _pixel_grid(height, width)
    return cv2.remap(previous_index, coords, None, interpolation=cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def joint_histogram(warped_previous: np.ndarray, current: np.ndarray, n_previous: int, n_current: int) -> np.ndarray:
    """Pixel counts of every (warped previous value, current value) pair.

    ``warped_previous`` values lie in ``0..n_previous``, ``current`` in ``0..n_current``
    (both ``(H, W)`` unsigned). Returns ``(n_previous + 1, n_current + 1) int64``; row/column 0
    is VOID, so row sums are the warped areas and column sums the current areas.
    """
    cols = n_current + 1
    size = (n_previous + 1) * cols
    if size <= np.iinfo(np.uint16).max and current.size < _EXACT_FLOAT32_COUNT:
        # The usual case (≤ 255 segments): a uint16 key and OpenCV's histogram, one bin per key
        # value, ~5x faster than np.bincount (which first widens every key to int64). Its
        # float32 bins count exactly below 2**24 pixels.
        key = warped_previous.astype(np.uint16, copy=False) * np.uint16(cols)
        key += current.astype(np.uint16, copy=False)
        hist = cv2.calcHist([key], [0], None, [size], [0, size])
        return hist.astype(np.int64).reshape(n_previous + 1, cols)
    key = warped_previous.astype(np.int64) * cols + current
    return np.bincount(key.ravel(), minlength=size).reshape(n_previous + 1, cols)


def overlap_matrix(joint: np.ndarray, measure: str = "dice") -> np.ndarray:
    """Overlap of every (warped previous A, current B) pair, from a :func:`joint_histogram`.

    ``measure``: ``"dice"`` ``2|A∩B| / (|A| + |B|)`` (HybridTracker), ``"iou"`` ``|A∩B| / |A∪B|``,
    or ``"dice_coverage"`` — the mean of dice and the coverage ``|A∩B| / |B|`` of the current
    segment. Dice collapses when an object is suddenly half hidden (B ≪ A) although all of B
    lies where A went; coverage keeps that evidence, dice keeps the full continuation of A
    preferred over a small newcomer inside it. Returns ``(P, C) float64`` (VOID dropped);
    empty pairs get 0.
    """
    inter = joint[1:, 1:].astype(np.float64)
    area_prev = joint[1:, :].sum(axis=1, dtype=np.float64)[:, None]
    area_cur = joint[:, 1:].sum(axis=0, dtype=np.float64)[None, :]
    return _overlap(inter, area_prev, area_cur, measure)


def _overlap(inter, area_prev, area_cur, measure: str):
    def ratio(numer, denom):
        return np.where(denom > 0, numer / np.maximum(denom, 1.0), 0.0)

    if measure == "dice":
        return ratio(2.0 * inter, area_prev + area_cur)
    if measure == "iou":
        return ratio(inter, area_prev + area_cur - inter)
    if measure == "dice_coverage":
        return 0.5 * (ratio(2.0 * inter, area_prev + area_cur) + ratio(inter, area_cur))
    raise ValueError(f"unknown overlap measure {measure!r}")


def overlap_matrix_per_pair(warped_previous: np.ndarray, current: np.ndarray, n_previous: int, n_current: int,
                            measure: str = "dice") -> np.ndarray:
    """The same matrix as ``overlap_matrix(joint_histogram(...))``, one pair of boolean masks at a
    time. Slow on purpose: the baseline of the speed benchmark and the oracle of the tests."""
    out = np.zeros((n_previous, n_current))
    for i in range(n_previous):
        a = warped_previous == i + 1
        area_a = float(a.sum())
        for j in range(n_current):
            b = current == j + 1
            out[i, j] = _overlap(float(np.logical_and(a, b).sum()), area_a, float(b.sum()), measure)
    return out


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, D)`` × ``(M, D)`` → ``(N, M)`` cosine similarities; a zero vector has similarity 0."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a / np.where(na > 0, na, 1.0)) @ (b / np.where(nb > 0, nb, 1.0)).T


def gaussian_log_likelihood(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Log-likelihood of each detection descriptor under each track's diagonal Gaussian.

    ``x``: ``(M, D)`` detections; ``mean``, ``var``: ``(N, D)`` per-track predictive mean and
    variance. Returns ``(N, M)``: ``Σ_d −½ [log 2πσ²_nd + (x_md − μ_nd)² / σ²_nd]``.
    """
    x = np.asarray(x, np.float64)[None, :, :]
    mean = np.asarray(mean, np.float64)[:, None, :]
    var = np.asarray(var, np.float64)[:, None, :]
    return -0.5 * (np.log(2.0 * np.pi * var) + (x - mean) ** 2 / var).sum(axis=2)


def gaussian_affinity(x: np.ndarray, mean: np.ndarray, var: np.ndarray, obs_var: np.ndarray | None = None) -> np.ndarray:
    """The log-likelihood of :func:`gaussian_log_likelihood` made a [0, 1] affinity.

    ``exp((log p(x) − log p(μ)) / D)``: the likelihood relative to the Gaussian's mode, as a
    geometric mean over the D dimensions, so that it does not shrink with D and can be fused
    with the overlap. Equals ``exp(−½ · mean_d (x_d − μ_d)² / σ²_d)``. ``x`` ``(M, D)``,
    ``mean``/``var`` ``(N, D)``; ``obs_var`` ``(M,)`` adds each detection's own observation
    variance (a small segment's pooled colour is noisier). Returns ``(N, M)``.
    """
    x = np.asarray(x, np.float64)[None, :, :]
    mean = np.asarray(mean, np.float64)[:, None, :]
    var = np.asarray(var, np.float64)[:, None, :]
    if obs_var is not None:
        var = var + np.asarray(obs_var, np.float64)[None, :, None]
    return np.exp(-0.5 * ((x - mean) ** 2 / var).mean(axis=2))


def category_gate(track_categories: np.ndarray, segment_categories: np.ndarray,
                  confusable: tuple[tuple[int, ...], ...] = ()) -> np.ndarray:
    """``(N, M) bool``: may track n take segment m? Same category, or both in one confusable group."""
    t = np.asarray(track_categories)
    s = np.asarray(segment_categories)
    gate = t[:, None] == s[None, :]
    if confusable and t.size and s.size:
        # Both in one group ⇔ their rows of the (category × group) membership share a 1: one small
        # integer product instead of two np.isin calls per group (~40 µs each).
        shared = _membership(t, confusable) @ _membership(s, confusable).T
        gate |= shared > 0
    return gate


def _membership(categories: np.ndarray, confusable: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """``(len(categories), len(confusable)) int64``: 1 where the category is in the group."""
    rows = _membership_rows(confusable)
    zero = rows[None]
    return np.array([rows.get(int(c), zero) for c in categories.ravel()], np.int64).reshape(-1, len(confusable))


@functools.lru_cache(maxsize=16)
def _membership_rows(confusable: tuple[tuple[int, ...], ...]) -> dict:
    """category → its membership row, and ``None`` → the all-zero row (categories in no group)."""
    rows = {None: (0,) * len(confusable)}
    for c in {c for group in confusable for c in group}:
        rows[int(c)] = tuple(int(c in group) for group in confusable)
    return rows


def index_dtype(n_segments: int) -> type:
    """uint8 while the K segments and VOID fit (less memory traffic, and ``cv2.LUT`` applies), else uint16."""
    return np.uint8 if n_segments < 255 else np.uint16


def relabel(index: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[index]`` for a compact index map: ``cv2.LUT`` when ``index`` is uint8 (one table
    lookup per pixel, ~2x faster than ``np.take``), else ``np.take``. ``table``: ``(K+1,)``."""
    if index.dtype == np.uint8 and table.dtype in (np.int32, np.uint8, np.uint16, np.float32):
        full = np.zeros(256, table.dtype)
        full[:len(table)] = table
        return cv2.LUT(index, full)
    return np.take(table, index)


def carry_lost_segments(current: np.ndarray, warped_previous: np.ndarray, n_previous: int,
                        carried_rows: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The index map the next frame will warp: this frame's segments plus lost tracks' masks.

    ``current``: ``(H, W)`` compact index map (values ``0..K``); ``warped_previous``: the
    previous map (values ``0..n_previous``) warped into this frame; ``carried_rows``: ``(L,)`` its values (lost tracks)
    to carry on; ``free``: ``(K + 1,) bool``, which current values (VOID, stuff…) a carried
    mask may cover. Carried row ``carried_rows[l]`` becomes value ``K + 1 + l``. A track whose
    detection was missed keeps moving with the flow, so the pixel tracker can take it up
    again when the segment comes back. Returns ``(H, W)`` uint8/uint16.
    """
    n, n_carried = len(free) - 1, len(carried_rows)
    dtype = index_dtype(n + n_carried)
    out = current.astype(dtype, copy=False)
    if not n_carried:
        return out
    table = np.zeros(n_previous + 1, dtype)
    table[np.asarray(carried_rows, np.int64)] = np.arange(n + 1, n + n_carried + 1, dtype=dtype)
    if dtype == np.uint8 and current.dtype == np.uint8 and warped_previous.dtype == np.uint8:
        # Carried values (K+1…) exceed every current value (0…K), so "the carried value where
        # the current pixel is free and something is carried, else the current value" is
        # max(current, carried & free-mask): four OpenCV passes over uint8 instead of numpy's
        # boolean temporaries, and only inside the box of the carried pixels (~2.5 ms → ~0.8 ms at
        # 1024×2048).
        carried = relabel(warped_previous, table)
        x, y, w, h = cv2.boundingRect(carried)
        out = current.copy()
        if w and h:
            box = (slice(y, y + h), slice(x, x + w))
            free_mask = relabel(current[box], np.where(np.asarray(free, bool), 255, 0).astype(np.uint8))
            out[box] = cv2.max(current[box], cv2.bitwise_and(carried[box], free_mask))
        return out
    carried = relabel(warped_previous, table)
    is_free = relabel(current, np.asarray(free, np.uint8)).astype(bool)
    return np.where(is_free & (carried > 0), carried, out).astype(dtype, copy=False)


def fuse_affinities(pixel: np.ndarray | None, instance: np.ndarray | None, pixel_weight: float,
                    instance_weight: float) -> np.ndarray:
    """Weighted mean of the pixel and instance affinities (``(N, M)`` each, in [0, 1]).
    A matrix whose weight is 0 may be ``None``."""
    total, weight = 0.0, 0.0
    for matrix, w in ((pixel, pixel_weight), (instance, instance_weight)):
        if w > 0:
            if matrix is None:
                raise ValueError("an affinity with a positive weight was not computed")
            total = total + w * matrix
            weight += w
    return total / weight
