"""Training data of the learned tracker: graphs recorded along synthetic clips with known identities.

Each clip is a hard-footage video (:mod:`operators.synth.footage`: low frame rate, runs of
missed detections, spurious blobs, one-frame class flips, look-alikes) whose per-frame segments
are scrambled, so only association gives them identities. The generator knows the truth: each
predicted thing segment belongs to the GT identity it covers most (at least half of its pixels),
or to none (a spurious blob).

:class:`RecordingTracker` runs the learned tracker's observation and commit with the *true*
assignment (teacher forcing): every frame it builds the same graph
(:func:`operators.association.learned.graph_features`) that inference builds, records it with its
targets, and then commits the true matches, so the tracks' motion, appearance, lost states and
carried masks evolve as they would under a perfect tracker. Training then runs the network
over these recorded sequences (:mod:`operators.training.tracker_loop`), carrying the recurrent
state along the true assignment.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.association import TrackerConfig, TrackerFrame, VideoTracker
from operators.association.learned import FrameGraph, graph_features, split_assignment
from operators.formats.categories import CITYSCAPES_THING_IDS
from operators.formats.panoptic import PanopticFrame
from operators.synth.footage import HardFootage, footage_frames


@dataclass
class FrameRecord:
    """One frame of a clip: its graph and the targets.

    ``edge_target (T, D)`` 1 where track i is detection j's identity; ``new_target (D,)`` 1 for a
    detection of an identity no live track has; ``matched (T,)`` the detection each track takes
    under the true assignment (−1 none); ``new_detections (N,)`` detections that start tracks,
    ``new_track_ids (N,)`` their ids; ``true_detection (D,)`` 1 unless spurious;
    ``detection_class (D,)`` the position of its identity's true class in the class list (−1
    spurious or unknown).
    """

    graph: FrameGraph
    edge_target: np.ndarray
    new_target: np.ndarray
    matched: np.ndarray
    new_detections: np.ndarray
    new_track_ids: np.ndarray
    true_detection: np.ndarray
    detection_class: np.ndarray


def true_identities(gt: PanopticFrame, prediction: PanopticFrame, things: frozenset[int]) -> dict[int, int]:
    """Predicted thing segment id → the GT thing id it covers most (≥ half of its pixels; a
    larger segment wins a tie for one identity). Segments on no GT thing are left out (spurious)."""
    gt_ids, pred_ids = gt.ids.astype(np.int64), prediction.ids.astype(np.int64)
    gt_things = {s.id for s in gt.segments if s.category_id in things and not s.iscrowd}
    out, taken = {}, set()
    pred_things = [s for s in prediction.segments if s.category_id in things and not s.iscrowd]
    for seg in sorted(pred_things, key=lambda s: (-s.area, s.id)):
        values, counts = np.unique(gt_ids[pred_ids == seg.id], return_counts=True)
        if not counts.size:
            continue
        order = np.lexsort((values, -counts))
        best, count = int(values[order[0]]), int(counts[order[0]])
        if best in gt_things and best not in taken and 2 * count >= counts.sum():
            out[seg.id] = best
            taken.add(best)
    return out


class RecordingTracker(VideoTracker):
    """The learned tracker's observation and commit under the true assignment (teacher forcing)."""

    def __init__(self, video_id: str, config: TrackerConfig, classes: tuple[int, ...]):
        super().__init__(video_id, config)
        self.classes = classes
        self.identity_of_track: dict[int, int | None] = {}

    def record(self, frame: TrackerFrame, identity: dict[int, int], true_class: dict[int, int]) -> FrameRecord:
        """Track ``frame`` with the true assignment; ``identity``: segment id → GT identity,
        ``true_class``: GT identity → its category."""
        obs = self._observe(frame)
        graph = graph_features(self, obs, self.classes)
        live = {gid: tid for tid, gid in self.identity_of_track.items() if gid is not None and tid in self.tracks}
        row_of = {int(t): i for i, t in enumerate(graph.track_ids)}
        n_t, n_d = len(graph.track_ids), len(graph.columns)
        edge_target = np.zeros((n_t, n_d), np.float32)
        new_target = np.zeros(n_d, np.float32)
        true_detection = np.zeros(n_d, np.float32)
        detection_class = np.full(n_d, -1, np.int64)
        matches: dict[int, int] = {}
        position = {c: k for k, c in enumerate(self.classes)}
        for k, col in enumerate(graph.columns):
            gid = identity.get(obs.segments[col].id)
            if gid is None:
                continue
            true_detection[k] = 1
            detection_class[k] = position.get(true_class[gid], -1)
            if gid in live:
                edge_target[row_of[live[gid]], k] = 1
                matches[int(col)] = live[gid]
            else:
                new_target[k] = 1
        self._commit(obs, matches)  # adds the new tracks' ids to ``matches``
        matched, new_detections, new_ids = split_assignment(graph, matches)
        for k, tid in zip(new_detections, new_ids):
            self.identity_of_track[int(tid)] = identity.get(obs.segments[graph.columns[k]].id)
        self.identity_of_track = {t: g for t, g in self.identity_of_track.items() if t in self.tracks}
        return FrameRecord(graph, edge_target, new_target, matched, new_detections, new_ids, true_detection,
                           detection_class)


@dataclass(frozen=True)
class ClipSpec:
    """One training clip: a hard-footage level, the corpus seed and the video index."""

    level: HardFootage
    seed: int
    video_index: int
    frames: int = 24


def training_clips(seed: int, clips: int, frames: int = 24) -> list[ClipSpec]:
    """``clips`` clips with the difficulty drawn per clip from ``seed``: speed 1–6×, runs of
    misses up to 2–12 frames, 0–8 % single misses and class flips, 0–0.6 spurious blobs per
    frame, look-alikes half the time, every scenario. Each clip is video 0 of a corpus of its
    own seed (``seed · 1000 + k``), so no clip shares a scene with the benchmark's seeds 7 and 101."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7EAC]))
    scenarios = ("default", "default", "occlusion", "similar", "small", "deform")
    out = []
    for k in range(clips):
        level = HardFootage(speed=float(rng.choice([1.0, 2.0, 3.0, 4.0, 6.0])),
                            miss_run_max=int(rng.integers(2, 13)), miss_run_prob=float(rng.uniform(0.0, 0.05)),
                            drop_prob=float(rng.uniform(0.0, 0.08)), class_flip_prob=float(rng.uniform(0.0, 0.08)),
                            spurious_per_frame=float(rng.uniform(0.0, 0.6)), look_alikes=bool(rng.random() < 0.5),
                            things=int(rng.integers(6, 16)), scenario=str(rng.choice(scenarios)))
        out.append(ClipSpec(level, seed * 1000 + k, 0, frames))
    return out


def record_clip(spec: ClipSpec, classes: tuple[int, ...] = CITYSCAPES_THING_IDS, height: int = 256,
                width: int = 512, flow: str = "dis") -> list[FrameRecord]:
    """The recorded graphs of one clip. ``flow``: ``"dis"`` (DIS medium from the frames, as
    ``tubeflow track`` computes it) or ``"gt"`` (the generator's flow)."""
    from operators.flow.dis import DisFlow

    cfg = spec.level.synth_config(spec.seed, videos=spec.video_index + 1, frames=spec.frames, height=height,
                                  width=width)
    things = frozenset(CITYSCAPES_THING_IDS)
    tracker = RecordingTracker(cfg.video_id(spec.video_index), TrackerConfig(method="hybrid"), classes)
    dis = DisFlow("medium") if flow == "dis" else None
    records, previous = [], None
    for f in footage_frames(spec.level, cfg, spec.video_index):
        motion = None
        if previous is not None:
            motion = dis(f.rgb, previous) if dis is not None else f.flow
        identity = true_identities(f.gt, f.prediction, things)
        true_class = {s.id: s.category_id for s in f.gt.segments}
        records.append(tracker.record(TrackerFrame(f.frame_index, f.prediction, f.rgb, motion), identity, true_class))
        previous = f.rgb
    return records
