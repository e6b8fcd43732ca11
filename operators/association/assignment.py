"""One assignment call: which track takes which segment, given an affinity matrix.

Two rules from the VPS trackers:

* ``"hungarian"`` — HVPS: the assignment of maximum total affinity
  (``scipy.optimize.linear_sum_assignment``), pairs below a minimum affinity are not matches.
* ``"mutual"`` — HybridTracker: keep (i, j) only when j is i's best segment *and* i is j's
  best track (mutual check on argmax), above the same minimum.

Both are deterministic: ties go to the lower index.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def assign(affinity: np.ndarray, allowed: np.ndarray, method: str, min_affinity: float) -> list[tuple[int, int]]:
    """Matches ``(row, column)`` sorted by row.

    ``affinity``: ``(N, M)`` float in [0, 1]; ``allowed``: ``(N, M) bool`` gate (category etc.).
    A pair is a candidate only if allowed and ``affinity ≥ min_affinity``.
    """
    affinity = np.asarray(affinity, np.float64)
    if affinity.size == 0:
        return []
    candidate = np.asarray(allowed, bool) & (affinity >= min_affinity)
    if method == "hungarian":
        return hungarian_assignment(affinity, candidate)
    if method == "mutual":
        return mutual_best_assignment(affinity, candidate)
    raise ValueError(f"unknown assignment method {method!r}")


def hungarian_assignment(affinity: np.ndarray, candidate: np.ndarray) -> list[tuple[int, int]]:
    """Maximum-total-affinity matching over the candidate pairs.

    Non-candidates get weight 0, which is the same as leaving the row unmatched, so the
    optimum over the full matrix is the optimum over candidate pairs; zero-weight picks are
    dropped afterwards. The tiny offset keeps a candidate of affinity exactly
    ``min_affinity = 0`` distinguishable from a non-candidate.
    """
    weight = np.where(candidate, affinity + 1e-9, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if candidate[r, c]]


def mutual_best_assignment(affinity: np.ndarray, candidate: np.ndarray) -> list[tuple[int, int]]:
    """Pairs that are each other's best candidate (``argmax`` of row and of column)."""
    masked = np.where(candidate, affinity, -np.inf)
    best_col = masked.argmax(axis=1)
    best_row = masked.argmax(axis=0)
    return [(i, int(j)) for i, j in enumerate(best_col) if candidate[i, j] and best_row[j] == i]
