"""The records of the tracker: one frame of input, and one track with its state machine.

A :class:`Track` moves through the ByteTrack states (Zhang et al., ECCV 2022,
``byte_tracker.py``): ``tracked`` while it is matched frame after frame, ``lost`` when a
frame has no segment for it (kept in the temporal-consistency memory for re-identification),
``removed`` once it has been lost for more than ``max_lost_frames`` frames. A small newcomer
starts ``tentative`` (``TrackerConfig.tentative_max_area``): not output, and forgotten unless the
next frame matches it, when it becomes ``tracked``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from operators.association.appearance import GaussianAppearance
from operators.association.motion import MotionState
from operators.formats.panoptic import PanopticFrame, SegmentInfo


class TrackState(str, enum.Enum):
    TENTATIVE = "tentative"
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
    centroid and sqrt(area) in pixels; ``appearance`` is its Gaussian appearance belief;
    ``motion`` its Kalman state as of the last frame tracked (predicted through frames it
    was lost); ``class_votes`` category → decayed sum of matched segments' scores, whose
    argmax is ``category_id`` (track scoring: the class comes from the track's history)."""

    track_id: int
    category_id: int
    state: TrackState
    first_frame: int
    last_frame: int
    appearance: GaussianAppearance | None
    history: list[tuple[int, float, float, float]] = field(default_factory=list)
    score: float = 1.0
    motion: MotionState | None = None
    class_votes: dict[int, float] = field(default_factory=dict)

    @property
    def size(self) -> float:
        """sqrt of the largest recent area: an object that is leaving or being occluded shrinks,
        and its full size is the better scale for where it may reappear."""
        return max((h[3] for h in self.history), default=1.0)

    def frames_unseen(self, frame_index: int) -> int:
        return frame_index - self.last_frame

    def vote(self, category_id: int, score: float, memory: float) -> None:
        """Add a matched segment's class to the votes (older votes decay by ``memory`` per
        match) and take the class with the most votes; ties keep the current class."""
        self.class_votes = {c: memory * v for c, v in self.class_votes.items()}
        self.class_votes[category_id] = self.class_votes.get(category_id, 0.0) + max(score, 1e-3)
        best = max(self.class_votes.values())
        if self.class_votes.get(self.category_id, -1.0) < best - 1e-12:
            self.category_id = min(c for c, v in self.class_votes.items() if v >= best - 1e-12)

    def to_json(self) -> dict:
        return {"track_id": self.track_id, "category_id": self.category_id, "state": self.state.value,
                "first_frame": self.first_frame, "last_frame": self.last_frame,
                "history": [list(h) for h in self.history], "score": self.score,
                "motion": None if self.motion is None else self.motion.to_json(),
                "class_votes": [[c, v] for c, v in sorted(self.class_votes.items())],
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
                   float(record["score"]),
                   None if record.get("motion") is None else MotionState.from_json(record["motion"]),
                   {int(c): float(v) for c, v in record.get("class_votes", [])})
