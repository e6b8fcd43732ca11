"""The hybrid tracker's stages with the learned network's help: the assisted and the composite
(default) trackers.

Both run :class:`~operators.association.tracker.VideoTracker`'s stage 2 (tracks in the previous
index map) and stage 3 (re-identification of lost tracks) — the same candidates, gates, floors and
assignment — and the learned tracker's network (:mod:`operators.association.learned`) on the same
frame, whose recurrent state they keep (checkpoints as :class:`~operators.association.learned.LearnedTracker`'s).
:class:`AssistedTracker` assigns every pair on the network's match probability;
:class:`CompositeTracker` only where the hand-set stages are unsure (why, with the figures:
the association README's *Assisted tracker* and *Composite tracker*).
"""
from __future__ import annotations

import numpy as np

from operators.association.assignment import assign
from operators.association.learned import LearnedTracker
from operators.association.track import Track, TrackerFrame
from operators.association.tracker import VideoTracker, _Observation
from operators.formats.panoptic import PanopticFrame


class AssistedTracker(LearnedTracker):
    """The hybrid tracker's stages decided by the network (``TrackerConfig(method="assisted")``).

    Stage 2 (tracks in the previous index map) and stage 3 (the re-identification cascade of
    lost tracks) run as in :class:`VideoTracker` — the same candidates, class and motion gates,
    appearance floors, ``min_affinity`` / ``reid_threshold`` and Hungarian assignment — but the
    affinity they assign on is the network's match probability of the pair instead of the
    hand-set fusion; unmatched segments start tracks by the hybrid's rule (small newcomers are
    tentative), not by the new-track head. The recurrent update and the track heads (class and
    score of the output) are the learned tracker's. Checkpoints as :class:`LearnedTracker`'s.
    """

    METHOD = "assisted"

    def update(self, frame: TrackerFrame) -> PanopticFrame:
        obs, graph = self._observe_graph(frame)
        match, _ = self._network(graph)
        # one extra zero row / column: a track or segment outside the graph has probability 0
        self._match = np.pad(match, ((0, 1), (0, 1)))
        self._graph_row = {int(t): i for i, t in enumerate(graph.track_ids)}
        self._graph_col = {int(c): j for j, c in enumerate(graph.columns)}
        matches = self._match_tracked(obs)
        matches.update(self._reidentify(obs, matches))
        return self._commit(obs, matches)

    def _decision_affinity(self, tracks: list[Track], cols: np.ndarray, affinity_: np.ndarray) -> np.ndarray:
        rows = [self._graph_row.get(t.track_id, -1) for t in tracks]
        return self._match[np.ix_(rows, [self._graph_col.get(int(c), -1) for c in cols])]

    def _starts_tentative(self, obs: _Observation, col: int) -> bool:
        return VideoTracker._starts_tentative(self, obs, col)


VOUCH_OVERLAP = 0.5
"""The composite tracker's mutual check: a (track, segment) pair whose warped-mask overlap is at
least this and the best of its row and of its column is one the pixel tracker vouches for."""


def vouched_pairs(pixel: np.ndarray, gate: np.ndarray, least: float = VOUCH_OVERLAP) -> np.ndarray:
    """``(T, D) bool``: the pairs the pixel tracker vouches for — HybridTracker's mutual check on the
    warped-mask overlaps ``pixel`` (within ``gate``): overlap ≥ ``least`` and each the other's best
    (ties to the lower index, as :func:`~operators.association.assignment.mutual_best_assignment`)."""
    out = np.zeros(pixel.shape, bool)
    if pixel.size == 0:
        return out
    masked = np.where(gate, pixel, -1.0)
    best_col, best_row = masked.argmax(axis=1), masked.argmax(axis=0)
    rows = np.arange(pixel.shape[0])
    mutual = (best_row[best_col] == rows) & (masked[rows, best_col] >= least)
    out[rows[mutual], best_col[mutual]] = True
    return out


class CompositeTracker(AssistedTracker):
    """The assisted tracker where the hand-set tracker is sure (``TrackerConfig(method="composite")``).

    Stages 2 and 3 as :class:`AssistedTracker`'s, with three rules:

    a. **Floor**: the network's match probability decides only among the pairs whose hand-set
       affinity passes the stage's own floor (``min_affinity`` in stage 2, ``reid_threshold`` in
       stage 3); every other pair has probability 0.
    b. **Mutual check** (HybridTracker's): where the pixel tracker vouches for a pair
       (:func:`vouched_pairs`: warped-mask overlap ≥ :data:`VOUCH_OVERLAP`, each the other's best),
       the hand-set affinity decides that track and that segment — the stage's assignment on it, as
       the hybrid tracker makes it; the network assigns the tracks and segments left.
    c. **Track scoring from history**: a segment's output class and confidence are the hybrid's
       (class votes of the track's matches, running mean of scores), not the network's track heads.

    The hand-set affinity is the one stages 2 and 3 compute anyway; the recurrent update runs as in
    the learned tracker (the network's next input). Checkpoints as :class:`LearnedTracker`'s.
    The default tracker (``TrackerConfig().method``).
    """

    METHOD = "composite"

    def _stage_pairs(self, tracks: list[Track], cols: np.ndarray, hand: np.ndarray, gate: np.ndarray,
                     floor: float, pixel: np.ndarray | None) -> list[tuple[int, int]]:
        method = self.config.assignment
        decision = np.where(hand >= floor, self._decision_affinity(tracks, cols, hand), 0.0)
        vouched = np.zeros(hand.shape, bool) if pixel is None else vouched_pairs(pixel, gate)
        if not vouched.any():
            return assign(decision, gate, method, floor)
        free_rows, free_cols = ~vouched.any(axis=1), ~vouched.any(axis=0)
        fixed = [(i, j) for i, j in assign(hand, gate, method, floor) if not (free_rows[i] and free_cols[j])]
        for i, j in fixed:
            free_rows[i] = free_cols[j] = False
        rest = assign(decision, gate & free_rows[:, None] & free_cols[None, :], method, floor)
        return sorted(fixed + rest)

    def _output_frame(self, obs: _Observation, matches: dict[int, int], scores: list[float],
                      categories: dict[int, int]) -> PanopticFrame:
        self._recurrent_update(obs, matches)
        return VideoTracker._output_frame(self, obs, matches, scores, categories)
