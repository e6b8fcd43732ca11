"""The records of the tracker: one frame of input, and one track with its state machine.

A :class:`Track` moves through the ByteTrack states (Zhang et al., ECCV 2022,
``byte_tracker.py``): ``tracked`` while it is matched frame after frame, ``lost`` when a
frame has no segment for it (kept in the temporal-consistency memory for re-identification),
``removed`` once it has been lost for more than ``max_lost_frames`` frames.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from operators.association.appearance import GaussianAppearance
from operators.formats.panoptic import PanopticFrame, SegmentInfo


class TrackState(str, enum.Enum):
    TRACKED = "tracked"
    LOST = "lost"
    REMOVED = "removed"


@dataclass
class TrackerFrame:
    """One frame of one video, as the tracker consumes it.

    * ``panoptic`` — the segmenter's output for this frame alone: ``(H, W) int32`` ids whose
      values are *not* consistent over time, and ``segments_info`` with category, iscrowd and
      (optional) score.
    * ``rgb`` — ``(H, W, 3) uint8`` frame (for the colour descriptor); may be ``None`` when
      ``embeddings`` are given.
    * ``flow`` — ``(H, W, 2) float32`` optical flow from this frame to the previous one;
      ``None`` on a video's first frame (or to assume no motion).
    * ``embeddings`` — optional segment id → ``(D,)`` appearance embedding from the segmenter;
      when given, every thing segment must have one.
    * ``image_id`` — carried through for writers (``pred.json``), unused by the tracker.
    """

    frame_index: int
    panoptic: PanopticFrame
    rgb: np.ndarray | None = None
    flow: np.ndarray | None = None
    embeddings: dict[int, np.ndarray] | None = None
    image_id: object = None

    @classmethod
    def from_masks(cls, frame_index: int, masks: np.ndarray, category_ids, scores=None, iscrowd=None,
                   embeddings: np.ndarray | None = None, **kwargs) -> "TrackerFrame":
        """A frame from per-segment masks (what instance segmenters give) instead of an id map.

        ``masks``: ``(K, H, W) bool``; ``category_ids``, ``scores``, ``iscrowd``: length K;
        ``embeddings``: ``(K, D)``. Where masks overlap, the higher score wins; a segment
        entirely covered by higher-scored ones is left out. Segment k gets id k + 1.
        Raises :class:`ValueError` for an empty mask.
        """
        masks = np.asarray(masks, bool)
        k = masks.shape[0]
        scores = np.ones(k) if scores is None else np.asarray(scores, np.float64)
        empty = [i for i in range(k) if not masks[i].any()]
        if empty:
            raise ValueError(f"frame {frame_index}: masks {empty[:10]} are empty")
        ids = np.zeros(masks.shape[1:], np.int32)
        for i in np.argsort(scores, kind="stable"):  # ascending: the highest score is painted last
            ids[masks[i]] = i + 1
        present = set(np.unique(ids).tolist())
        segments = [SegmentInfo(i + 1, int(category_ids[i]), iscrowd=int(iscrowd[i]) if iscrowd is not None else 0,
                                score=float(scores[i])) for i in range(k) if i + 1 in present]
        for seg in segments:
            seg.area = int(np.count_nonzero(ids == seg.id))
        emb = None if embeddings is None else {s.id: np.asarray(embeddings[s.id - 1]) for s in segments}
        return cls(frame_index, PanopticFrame(ids, segments), embeddings=emb, **kwargs)


@dataclass
class Track:
    """One identity. ``history`` holds its last few matches as ``(frame_index, x, y, size)``:
    centroid and sqrt(area) in pixels; ``appearance`` is its Gaussian appearance belief."""

    track_id: int
    category_id: int
    state: TrackState
    first_frame: int
    last_frame: int
    appearance: GaussianAppearance | None
    history: list[tuple[int, float, float, float]] = field(default_factory=list)
    score: float = 1.0

    @property
    def size(self) -> float:
        """sqrt of the largest recent area: an object that is leaving or being occluded shrinks,
        and its full size is the better scale for where it may reappear."""
        return max((h[3] for h in self.history), default=1.0)

    def frames_unseen(self, frame_index: int) -> int:
        return frame_index - self.last_frame

    def velocity(self) -> tuple[float, float]:
        """Pixels per frame from the oldest to the newest centroid of ``history`` (0 with one)."""
        if len(self.history) < 2:
            return 0.0, 0.0
        (f0, x0, y0, _), (f1, x1, y1, _) = self.history[0], self.history[-1]
        return (x1 - x0) / (f1 - f0), (y1 - y0) / (f1 - f0)

    def predicted_centroid(self, frame_index: int) -> tuple[float, float]:
        """Constant-velocity prediction of the centroid at ``frame_index``."""
        _, x, y, _ = self.history[-1]
        vx, vy = self.velocity()
        gap = frame_index - self.last_frame
        return x + vx * gap, y + vy * gap

    def to_json(self) -> dict:
        return {"track_id": self.track_id, "category_id": self.category_id, "state": self.state.value,
                "first_frame": self.first_frame, "last_frame": self.last_frame,
                "history": [list(h) for h in self.history], "score": self.score,
                "appearance": None if self.appearance is None else
                {"mean": self.appearance.mean.tolist(), "var": self.appearance.var.tolist()}}

    @classmethod
    def from_json(cls, record: dict) -> "Track":
        app = record["appearance"]
        appearance = None if app is None else GaussianAppearance(np.asarray(app["mean"], np.float64),
                                                                 np.asarray(app["var"], np.float64))
        return cls(int(record["track_id"]), int(record["category_id"]), TrackState(record["state"]),
                   int(record["first_frame"]), int(record["last_frame"]), appearance,
                   [(int(f), float(x), float(y), float(z)) for f, x, y, z in record["history"]],
                   float(record["score"]))
