"""Appearance of segments and tracks for the instance tracker.

* :func:`segment_statistics` — a non-learned descriptor for when the segmenter gives no
  embedding: mask-pooled colour mean and standard deviation (RGB scaled to [0, 1], 6 numbers),
  plus each segment's centroid, both from one pass of ``np.bincount`` over a regular pixel
  subsample.
* :class:`GaussianAppearance` — a track's appearance as a diagonal Gaussian over descriptors,
  updated with the Bayesian rule of the recurrent graph-network VIS tracker
  (Johnander et al., "Learning Video Instance Segmentation with Recurrent Graph Neural
  Networks", GCPR 2021 / IJCV 2022): each track keeps a mean and a variance, new
  detections update them, and association edges use the log-likelihood of a detection under
  the track's Gaussian.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from operators.association.affinity import relabel

COLOUR_DESCRIPTOR_DIM = 6


def sample_stride(height: int, width: int, sample_pixels: int) -> int:
    """Stride of the regular subsample that keeps about ``sample_pixels`` of an H×W frame."""
    return max(1, int(math.sqrt(height * width / max(sample_pixels, 1))))


def segment_statistics(rgb: np.ndarray | None, index: np.ndarray, n_segments: int,
                       sample_pixels: int = 1 << 15) -> tuple[np.ndarray | None, np.ndarray]:
    """Colour descriptors and centroids of the segments of a compact index map.

    ``rgb``: ``(H, W, 3) uint8`` frame, or ``None`` (then no descriptors are computed).
    ``index``: ``(H, W)`` compact index map, values ``0..n_segments`` (0 = VOID).
    Returns ``(descriptors (n, 6) float64 or None, centroids (n, 2) float64 (x, y))`` for
    segments 1..n. The statistics come from every ``s``-th pixel in each direction
    (:func:`sample_stride`); a segment too small to be hit by the subsample is measured at
    full resolution, so every non-empty segment gets exact-enough statistics.
    """
    height, width = index.shape
    stride = sample_stride(height, width, sample_pixels)
    rows, cols = np.mgrid[0:height:stride, 0:width:stride]
    sampled = index[::stride, ::stride].ravel()
    colours = None if rgb is None else rgb[::stride, ::stride].reshape(-1, 3)
    moments = _moments(sampled, rows.ravel(), cols.ravel(), colours, n_segments)

    missed = moments[0] == 0
    missed[0] = False
    if missed.any():  # small segments the subsample did not hit: one full-resolution pass for all
        missed_map = relabel(index, missed.astype(np.uint8))
        x, y, w, h = cv2.boundingRect(missed_map)   # scan only the box of the missed segments
        ys, xs = np.nonzero(missed_map[y:y + h, x:x + w])
        ys, xs = ys + y, xs + x
        labels = index[ys, xs]
        full = _moments(labels, ys, xs, None if rgb is None else rgb[ys, xs], n_segments)
        moments[:, missed] = full[:, missed]
    counts = np.maximum(moments[0, 1:], 1.0)
    centroids = np.stack([moments[2, 1:], moments[1, 1:]], axis=1) / counts[:, None]
    if rgb is None:
        return None, centroids
    mean = moments[3:6, 1:].T / counts[:, None]
    second = moments[6:9, 1:].T / counts[:, None]
    std = np.sqrt(np.maximum(second - mean ** 2, 0.0))
    return np.concatenate([mean, std], axis=1) / 255.0, centroids


def _moments(labels: np.ndarray, ys: np.ndarray, xs: np.ndarray, colours: np.ndarray | None,
             n_segments: int) -> np.ndarray:
    """Rows: count, Σy, Σx, Σr, Σg, Σb, Σr², Σg², Σb² per label ``0..n`` → ``(9, n + 1)``."""
    size = n_segments + 1
    out = np.zeros((9, size))
    out[0] = np.bincount(labels, minlength=size)
    out[1] = np.bincount(labels, weights=ys, minlength=size)
    out[2] = np.bincount(labels, weights=xs, minlength=size)
    if colours is None:
        return out
    if size <= _HISTOGRAM_MAX_LABELS and colours.dtype == np.uint8:
        # One (label, level) histogram per channel, then Σv and Σv² as two dot products with the
        # 256 levels: every sum is of integers below 2**53, so exactly the weighted bincounts'
        # values (tests/test_association_fast_paths.py) at a third of their cost.
        key = labels.astype(np.int64) * 256
        for c in range(3):
            hist = np.bincount(key + colours[:, c], minlength=size * 256).reshape(size, 256).astype(np.float64)
            out[3 + c] = hist @ _LEVELS
            out[6 + c] = hist @ _LEVELS_SQUARED
        return out
    for c in range(3):
        channel = colours[:, c].astype(np.float64)
        out[3 + c] = np.bincount(labels, weights=channel, minlength=size)
        out[6 + c] = np.bincount(labels, weights=channel * channel, minlength=size)
    return out


_HISTOGRAM_MAX_LABELS = 256
_LEVELS = np.arange(256, dtype=np.float64)
_LEVELS_SQUARED = _LEVELS ** 2


@dataclass
class GaussianAppearance:
    """A track's appearance: a diagonal Gaussian belief ``N(mean, var)`` over its descriptor.

    The update is the conjugate Bayesian update of a Gaussian mean with known observation
    noise ``r²`` (Bishop, PRML eqs. 2.141–2.142, in sequential form), as used for the track
    appearance model of Johnander et al. (GCPR 2021): a new track starts from a prior centred
    on its first descriptor with variance ``s0²``; before each frame the belief widens by the
    process noise ``q²`` (appearance drifts); a matched detection ``x`` then gives

        k = var / (var + r²),   mean ← mean + k (x − mean),   var ← (1 − k) var.

    A detection is scored under the predictive distribution ``N(x; mean, var + r²)``.
    ``mean`` and ``var`` are ``(D,) float64``.
    """

    mean: np.ndarray
    var: np.ndarray

    @classmethod
    def from_first(cls, x: np.ndarray, prior_std: float, obs_std: float) -> "GaussianAppearance":
        prior = cls(np.asarray(x, np.float64).copy(), np.full(len(x), prior_std ** 2))
        return prior.updated(x, obs_std, process_std=0.0)

    def updated(self, x: np.ndarray, obs_std: float, process_std: float) -> "GaussianAppearance":
        """The posterior after observing ``x`` (a new object; ``self`` is not changed)."""
        var = self.var + process_std ** 2
        gain = var / (var + obs_std ** 2)
        return GaussianAppearance(self.mean + gain * (np.asarray(x, np.float64) - self.mean), (1.0 - gain) * var)

    @staticmethod
    def updated_batch(means: np.ndarray, variances: np.ndarray, xs: np.ndarray, obs_std: np.ndarray,
                      process_std: float) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`updated` for ``N`` beliefs at once: ``means``, ``variances``, observations ``xs``
        ``(N, D)``, ``obs_std`` ``(N,)`` → the posteriors' ``(means, variances)``. The same
        element-wise operations, so the same values bit for bit."""
        var = variances + process_std ** 2
        gain = var / (var + (np.asarray(obs_std, np.float64) ** 2)[:, None])
        return means + gain * (np.asarray(xs, np.float64) - means), (1.0 - gain) * var
