"""Online association for one video: per-frame panoptic segments in, stable track ids out.

``VideoTracker.update(frame)`` runs, per frame (ByteTrack's shape: a state machine, pure
affinity functions, one assignment call per stage):

1. **Observe** — validate the frame and build its compact index map, the joint histogram
   with the previous frame's segments warped by the flow, colour descriptors and centroids.
   Nothing in the tracker changes here, so a rejected frame leaves the state intact.
2. **Match tracked tracks** — HybridTracker (Kim et al., "Hybrid Tracker with Pixel and
   Instance for Video Panoptic Segmentation", 2022): pixel affinity = dice of the warped
   previous segment and the current one; instance affinity = cosine of embeddings, or the
   Gaussian appearance likelihood of the colour descriptor; fused with configured weights,
   gated by category, assigned (Hungarian with minimum affinity as in HVPS, or mutual check).
3. **Re-identify** — the temporal-consistency memory: segments still unmatched are compared
   with lost tracks (and tracks that just missed step 2) by appearance × likelihood of the
   position predicted from the track's recent motion (HybridTracker's temporal consistency;
   HVPS's short-term retrieval and long-term re-ID, Woo et al., 2021). Recently lost tracks
   also keep their mask moving with the flow (``carry_lost_frames``), so step 2's pixel
   tracker can take them up again after a missed detection.
4. **Commit** — new tracks for the rest (ids in order of score), state transitions,
   appearance updates, output frame.

Thing segments get their track id; stuff segments (and crowd regions) get ``category_id + 1``:
they carry a category, not an identity.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import cv2
import numpy as np

from operators.association import affinity, motion
from operators.association.appearance import GaussianAppearance, segment_statistics
from operators.association.assignment import assign
from operators.association.config import TrackerConfig
from operators.association.track import Track, TrackerFrame, TrackState
from operators.errors import FormatMismatchError, InputError
from operators.formats.panoptic import VOID, PanopticFrame, SegmentInfo


@dataclass
class _Observation:
    """Everything computed from one frame before any state changes (K = segments in the frame)."""

    frame_index: int
    size: tuple[int, int]
    segments: list[SegmentInfo]
    index: np.ndarray              # (H, W) uint8/uint16 compact index map, 0..K
    areas: np.ndarray              # (K,) int64
    overlap: np.ndarray | None     # (K_prev, K) dice/IoU with the warped previous frame
    warped: np.ndarray | None      # (H, W) previous index map warped into this frame
    descriptors: np.ndarray | None  # (K, D) appearance (embedding or colour descriptor)
    centroids: np.ndarray          # (K, 2) float64 (x, y)
    thing: np.ndarray              # (K,) bool: gets a track id
    dropped: np.ndarray            # (K,) bool: thing below the score threshold → VOID
    uses_embeddings: bool
    camera: np.ndarray | None = None          # (2, 3) camera motion previous → this frame
    predicted: dict | None = None              # track id → MotionState predicted for this frame

    @functools.cached_property
    def boxes(self) -> np.ndarray:
        """``(K, 3)`` observations of the motion model: centroid x, y and size sqrt(area)."""
        return np.column_stack([self.centroids, np.sqrt(self.areas.astype(np.float64))])


class VideoTracker:
    """Tracker state of one video: the hybrid tracker (``TrackerConfig(method="hybrid")``).
    Deterministic: same frames in, same ids out.

    ``self.config.method`` always names the class that runs (``METHOD``), whatever ``config``
    said: a ``VideoTracker`` built with the default config (whose method is the composite) is the
    hybrid, and its checkpoints say so (:func:`~operators.association.methods.tracker_from_state`
    rebuilds the class a checkpoint names). :func:`~operators.association.methods.make_tracker`
    builds the tracker a config names.
    """

    METHOD = "hybrid"

    def __init__(self, video_id: str, config: TrackerConfig | None = None):
        self.video_id = str(video_id)
        config = config or TrackerConfig(method=self.METHOD)
        self.config = config if config.method == self.METHOD else replace(config, method=self.METHOD)
        self.tracks: dict[int, Track] = {}
        self.next_track_id = self.config.first_track_id
        self.last_frame_index: int | None = None
        self.size: tuple[int, int] | None = None
        self.embedding_dim: int | None = None
        self.previous_index: np.ndarray | None = None            # (H, W) compact index of the last frame
        self.previous_track_of_index = np.zeros(1, np.int64)     # compact index → track id (0 = none)
        self._things = frozenset(self.config.thing_category_ids)

    # ------------------------------------------------------------------ public
    def update(self, frame: TrackerFrame) -> PanopticFrame:
        """Associate one frame; returns its segments with track ids (a :class:`PanopticFrame`).

        Raises :class:`InputError` / :class:`FormatMismatchError` naming the video and frame for
        a frame of another size, flow of the wrong shape, a segment with an empty mask, ids
        missing from ``segments_info``, or a frame index that repeats or goes backwards. A
        rejected frame changes nothing: the next valid frame is tracked as if it never came.
        """
        obs = self._observe(frame)
        matches = self._match_tracked(obs)
        matches.update(self._reidentify(obs, matches))
        return self._commit(obs, matches)

    # ------------------------------------------------------------------ 1. observe
    def _where(self, frame_index) -> str:
        return f"video {self.video_id} frame {frame_index}"

    def _observe(self, frame: TrackerFrame) -> _Observation:
        where = self._where(frame.frame_index)
        cfg = self.config
        if self.last_frame_index is not None and frame.frame_index <= self.last_frame_index:
            verb = "repeats" if frame.frame_index == self.last_frame_index else "goes backwards"
            raise InputError(where, f"frame index {verb} (the last frame tracked was {self.last_frame_index}); "
                                    "frames must come in increasing order")
        ids = np.asarray(frame.panoptic.ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise FormatMismatchError(where, f"panoptic ids must be an (H, W) integer array, got {ids.dtype} {ids.shape}")
        size = (int(ids.shape[0]), int(ids.shape[1]))
        if self.size is not None and size != self.size:
            raise FormatMismatchError(where, f"frame size {size[1]}x{size[0]} (WxH) differs from the video's "
                                             f"{self.size[1]}x{self.size[0]}")
        if frame.rgb is not None and tuple(frame.rgb.shape) != size + (3,):
            raise FormatMismatchError(where, f"RGB frame has shape {tuple(frame.rgb.shape)}, expected {size + (3,)}")
        flow = None
        if frame.flow is not None and self.previous_index is not None:
            if tuple(np.shape(frame.flow)) != size + (2,):
                raise FormatMismatchError(where, f"flow has shape {tuple(np.shape(frame.flow))}, expected {size + (2,)} "
                                                 "(H, W, 2) from this frame to the previous one")
            flow = np.asarray(frame.flow, np.float32)

        segments = list(frame.panoptic.segments)
        index, n = self._compact_index(ids, segments, where)
        if self.previous_index is not None:
            warped = affinity.warp_segments(self.previous_index, flow)
            joint = affinity.joint_histogram(warped, index, len(self.previous_track_of_index) - 1, n)
            overlap = affinity.overlap_matrix(joint, cfg.overlap)
            areas = joint.sum(axis=0)
        else:
            warped, overlap = None, None
            areas = np.bincount(index.ravel(), minlength=n + 1)
        if areas[0] != _void_count(ids):
            low = int(ids.min())
            if low < 0:
                raise FormatMismatchError(where, f"negative id {low} in the id map")
            unknown = sorted(set(np.unique(ids).tolist()) - {s.id for s in segments} - {VOID})
            raise FormatMismatchError(where, f"ids {unknown[:10]} are in the id map but not in segments_info")
        empty = [s.id for s, a in zip(segments, areas[1:]) if a == 0]
        if empty:
            raise FormatMismatchError(where, f"segments {empty[:10]} have an empty mask (listed in segments_info, "
                                             "no pixel in the id map)")

        categories = np.array([s.category_id for s in segments], np.int64)
        scores = np.array([1.0 if s.score is None else s.score for s in segments])
        is_thing_class = np.array([c in self._things and not s.iscrowd for c, s in zip(categories, segments)], bool)
        dropped = is_thing_class & (scores < cfg.thing_score_threshold)
        thing = is_thing_class & ~dropped

        embeddings = self._embeddings(frame, segments, thing, where)
        need_colour = embeddings is None and (cfg.instance_weight > 0 or cfg.max_lost_frames > 0)
        if need_colour and frame.rgb is None:
            raise InputError(where, "the instance tracker needs the RGB frame (or segment embeddings)")
        colours, centroids = segment_statistics(frame.rgb if need_colour else None, index, n, cfg.colour_sample_pixels)
        camera = None
        if flow is not None and cfg.camera_motion and self.tracks:
            camera = motion.camera_motion(flow, index, np.concatenate([[True], ~is_thing_class]))
        return _Observation(frame.frame_index, size, segments, index, areas[1:].astype(np.int64), overlap, warped,
                            embeddings if embeddings is not None else colours, centroids, thing, dropped,
                            embeddings is not None, camera, self._predict(frame.frame_index, camera))

    def _predict(self, frame_index: int, camera: np.ndarray | None) -> dict:
        """Every track's motion state predicted for ``frame_index`` (the camera's motion taken out
        first); the tracks themselves are not changed."""
        noise = self.config.motion_noise
        steps = 1 if self.last_frame_index is None else frame_index - self.last_frame_index
        states = []
        for track in self.tracks.values():
            if track.motion is None:  # a track from a checkpoint written before the motion model
                _, x, y, size = track.history[-1]
                states.append(motion.initiate(np.array([x, y, size]), noise))
            else:
                states.append(track.motion)
        if not states:
            return {}
        means, covs, anchors = motion.predict_batch(np.array([m.mean for m in states]), np.array([m.cov for m in states]),
                                                    np.array([m.anchor for m in states]), camera, noise, steps)
        return {tid: motion.MotionState(m, c, a) for tid, m, c, a in zip(self.tracks, means, covs, anchors)}

    def _motion_terms(self, tracks: list[Track], obs: _Observation, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(squared Mahalanobis distances, motion affinities), both ``(len(tracks), len(cols))``."""
        states = [obs.predicted[t.track_id] for t in tracks]
        d2 = motion.mahalanobis_sq(np.array([m.mean for m in states]), np.array([m.cov for m in states]),
                                   obs.boxes[cols], self.config.motion_noise)
        return d2, motion.motion_affinity(d2)

    def _class_factor(self, tracks: list[Track], obs: _Observation, cols: np.ndarray) -> np.ndarray:
        """1 where track and segment have the same class, ``confusable_affinity`` elsewhere."""
        same = np.array([t.category_id for t in tracks])[:, None] == \
            np.array([obs.segments[c].category_id for c in cols])[None, :]
        return np.where(same, 1.0, self.config.confusable_affinity)

    @staticmethod
    def _compact_index(ids: np.ndarray, segments: list[SegmentInfo], where: str) -> tuple[np.ndarray, int]:
        """``(H, W)`` uint8/uint16 map: pixel → 1 + position of its segment in ``segments`` (0 = VOID, or
        an id not in ``segments`` or negative, which the caller detects from the VOID count)."""
        n = len(segments)
        if n > affinity.MAX_SEGMENTS:
            raise FormatMismatchError(where, f"{n} segments in one frame; at most {affinity.MAX_SEGMENTS} are supported")
        seg_ids = np.array([s.id for s in segments], np.int64)
        if len(set(seg_ids.tolist())) != n:
            raise FormatMismatchError(where, "segments_info lists a segment id twice")
        if n and (seg_ids.min() <= VOID):
            raise FormatMismatchError(where, f"segment ids must be positive, got {int(seg_ids.min())}")
        # One entry past the largest listed id, 0: ``mode="clip"`` sends every id above it (and every
        # negative id, to entry 0) to VOID, so no pass over the map for its range is needed; the
        # caller's VOID count finds such ids. np.zeros is lazily zero-mapped, so a large table is cheap.
        dtype = affinity.index_dtype(n)
        lut = np.zeros((int(seg_ids.max()) if n else 0) + 2, dtype)
        lut[seg_ids] = np.arange(1, n + 1, dtype=dtype)
        return np.take(lut, ids, mode="clip"), n

    def _embeddings(self, frame: TrackerFrame, segments: list[SegmentInfo], thing: np.ndarray,
                    where: str) -> np.ndarray | None:
        if not frame.embeddings:
            if self.embedding_dim is not None and thing.any():
                raise InputError(where, "segment embeddings are missing; earlier frames of this video had them")
            return None
        missing = [s.id for s, t in zip(segments, thing) if t and s.id not in frame.embeddings]
        if missing:
            raise InputError(where, f"thing segments {missing[:10]} have no embedding")
        dim = self.embedding_dim or len(next(iter(frame.embeddings.values())))
        out = np.zeros((len(segments), dim))
        for k, s in enumerate(segments):
            if s.id in frame.embeddings:
                vec = np.asarray(frame.embeddings[s.id], np.float64).ravel()
                if vec.shape != (dim,):
                    raise InputError(where, f"embedding of segment {s.id} has {vec.size} values, expected {dim}")
                out[k] = vec
        return out

    # ------------------------------------------------------------------ 2. tracked tracks
    def _instance_affinity(self, tracks: list[Track], obs: _Observation, cols: np.ndarray) -> np.ndarray:
        """``(len(tracks), len(cols))`` appearance affinity in [0, 1]."""
        x = obs.descriptors[cols]
        means = np.array([t.appearance.mean for t in tracks])
        if obs.uses_embeddings:
            return np.clip(affinity.cosine_similarity(means, x), 0.0, 1.0)
        var = np.array([t.appearance.var for t in tracks])
        return affinity.gaussian_affinity(x, means, var, self._obs_std(obs.areas[cols]) ** 2)

    def _obs_std(self, areas: np.ndarray) -> np.ndarray:
        """Observation noise of pooled descriptors over segments of ``areas`` pixels."""
        cfg = self.config
        return cfg.appearance_obs_std * np.sqrt(np.maximum(1.0, cfg.appearance_full_area / np.maximum(areas, 1)))

    def _gate(self, tracks: list[Track], obs: _Observation, cols: np.ndarray,
              looks: np.ndarray | None, min_looks: float) -> np.ndarray:
        """Same class, or a confusable one when the segment looks like the track (``looks``:
        the appearance affinity ≥ ``min_looks``; ``None`` when the instance tracker is off)."""
        categories = np.array([obs.segments[c].category_id for c in cols], np.int64)
        track_categories = np.array([t.category_id for t in tracks], np.int64)
        gate = affinity.category_gate(track_categories, categories, self.config.confusable_categories)
        if looks is not None and min_looks > 0 and self.config.confusable_categories:
            gate &= (track_categories[:, None] == categories[None, :]) | (looks >= min_looks)
        return gate

    def _match_tracked(self, obs: _Observation) -> dict[int, int]:
        """Stage 2: tracks in the previous index map (tracked, or lost with a carried mask) ↔
        thing segments. Returns {column: track_id}."""
        cfg = self.config
        row_of = {int(tid): r for r, tid in enumerate(self.previous_track_of_index[1:]) if tid}
        tracks = [t for t in self.tracks.values() if t.state is TrackState.TRACKED or t.track_id in row_of]
        cols = np.flatnonzero(obs.thing)
        if not tracks or not cols.size:
            return {}
        pixel = instance = None
        if cfg.pixel_weight > 0:
            pixel = np.zeros((len(tracks), cols.size))
            with_mask = [i for i, t in enumerate(tracks) if t.track_id in row_of]
            pixel[with_mask] = obs.overlap[np.ix_([row_of[tracks[i].track_id] for i in with_mask], cols)]
        if cfg.instance_weight > 0:
            instance = self._instance_affinity(tracks, obs, cols)
        fused = affinity.fuse_affinities(pixel, instance, cfg.pixel_weight, cfg.instance_weight)
        gate = self._gate(tracks, obs, cols, instance, cfg.confusable_min_appearance_tracked)
        if cfg.motion_weight > 0:
            d2, moving = self._motion_terms(tracks, obs, cols)
            total = cfg.pixel_weight + cfg.instance_weight
            fused = (total * fused + cfg.motion_weight * moving) / (total + cfg.motion_weight)
            near = d2 <= cfg.motion_gate
            gate &= near if pixel is None else near | (pixel >= cfg.motion_gate_overlap)
        fused = fused * self._class_factor(tracks, obs, cols)
        pairs = self._stage_pairs(tracks, cols, fused, gate, cfg.min_affinity, pixel)
        return {int(cols[j]): tracks[i].track_id for i, j in pairs}

    def _stage_pairs(self, tracks: list[Track], cols: np.ndarray, hand: np.ndarray, gate: np.ndarray,
                     floor: float, pixel: np.ndarray | None) -> list[tuple[int, int]]:
        """The (row, column) pairs stage 2 or 3 matches: ``hand`` is the stage's hand-set affinity
        ``(len(tracks), len(cols))``, ``gate`` its gates, ``floor`` its minimum (``min_affinity`` /
        ``reid_threshold``), ``pixel`` the warped-mask overlaps (stage 2) or ``None`` (stage 3).
        Here: the stage's assignment on ``_decision_affinity``; the composite tracker
        (:mod:`operators.association.assisted`) decides some pairs by ``hand``, the rest by the network."""
        return assign(self._decision_affinity(tracks, cols, hand), gate, self.config.assignment, floor)

    def _decision_affinity(self, tracks: list[Track], cols: np.ndarray, affinity_: np.ndarray) -> np.ndarray:
        """The affinity stages 2 and 3 assign on, ``(len(tracks), len(cols))``: the hand-set one here;
        the assisted tracker (:mod:`operators.association.assisted`) puts the network's in."""
        return affinity_

    # ------------------------------------------------------------------ 3. memory
    def _reidentify(self, obs: _Observation, matched: dict[int, int]) -> dict[int, int]:
        """Stage 3: unmatched thing segments ↔ lost tracks (and tracks step 2 left unmatched).

        A matching cascade (DeepSORT, Wojke et al. 2017, Sec. 2.3): tracks unseen for 1 frame
        choose first, then 2, … — the position spread grows with the gap, so one global
        assignment would let an old, vague track take a segment from a recent, sharp one.
        """
        cfg = self.config
        if cfg.max_lost_frames == 0:
            return {}
        taken = set(matched.values())
        candidates = [t for t in self.tracks.values() if t.track_id not in taken and t.appearance is not None]
        found: dict[int, int] = {}
        for gap in sorted({t.frames_unseen(obs.frame_index) for t in candidates}):
            tracks = [t for t in candidates if t.frames_unseen(obs.frame_index) == gap]
            cols = np.array([c for c in np.flatnonzero(obs.thing) if int(c) not in matched and int(c) not in found],
                            np.int64)
            if not cols.size:
                break
            # Motion, appearance and elapsed time must agree: the motion gate widens with the
            # time lost (the filter's covariance), the appearance has a floor of its own.
            d2, moving = self._motion_terms(tracks, obs, cols)
            looks = self._instance_affinity(tracks, obs, cols)
            score = looks * moving * self._class_factor(tracks, obs, cols)
            gate = self._gate(tracks, obs, cols, looks, cfg.confusable_min_appearance) & \
                (d2 <= cfg.reid_motion_gate) & (looks >= cfg.reid_min_appearance)
            pairs = self._stage_pairs(tracks, cols, score, gate, cfg.reid_threshold, None)
            found.update({int(cols[j]): tracks[i].track_id for i, j in pairs})
        return found

    # ------------------------------------------------------------------ 4. commit
    def _commit(self, obs: _Observation, matches: dict[int, int]) -> PanopticFrame:
        cfg = self.config
        scores = [1.0 if s.score is None else float(s.score) for s in obs.segments]
        # New identities: highest score first, ties by position in segments_info.
        tentative = set()
        for col in sorted((c for c in np.flatnonzero(obs.thing) if int(c) not in matches), key=lambda c: -scores[c]):
            matches[int(col)] = self.next_track_id
            self.next_track_id += 1
            if self._starts_tentative(obs, int(col)):
                tentative.add(int(col))

        noise, categories, boxes = cfg.motion_noise, {}, obs.boxes
        obs_stds = self._obs_std(obs.areas)
        # The Kalman update of every track seen in the previous frame, in one stacked pass.
        stepped = [(col, tid) for col, tid in matches.items()
                   if tid in self.tracks and obs.frame_index - self.tracks[tid].last_frame < 2]
        if stepped:
            predicted = [obs.predicted[tid] for _, tid in stepped]
            at = np.array([col for col, _ in stepped], np.int64)
            means, covs = motion.update_batch(np.array([m.mean for m in predicted]), np.array([m.cov for m in predicted]),
                                              boxes[at], noise)
            stepped_motion = {tid: motion.MotionState(means[k], covs[k], boxes[col].copy())
                              for k, (col, tid) in enumerate(stepped)}
        seen: list[tuple[Track, int]] = []   # tracks whose appearance takes this frame's descriptor
        for col, tid in matches.items():
            seg = obs.segments[col]
            x, y = obs.centroids[col]
            z = boxes[col]
            descriptor = None if obs.descriptors is None else obs.descriptors[col]
            obs_std = float(obs_stds[col])
            track = self.tracks.get(tid)
            if track is None:
                appearance = None if descriptor is None else GaussianAppearance.from_first(
                    descriptor, cfg.appearance_prior_std, obs_std)
                track = Track(tid, seg.category_id, TrackState.TENTATIVE if col in tentative else TrackState.TRACKED,
                              obs.frame_index, obs.frame_index, appearance, score=scores[col],
                              motion=motion.initiate(z, noise))
                self.tracks[tid] = track
            else:
                gap = obs.frame_index - track.last_frame
                track.motion = motion.reupdate_after_gap(obs.predicted[tid], z, gap, noise) if gap >= 2 else \
                    stepped_motion[tid]
                track.score = cfg.class_memory * track.score + (1.0 - cfg.class_memory) * scores[col]
            if descriptor is not None and track.first_frame != obs.frame_index:
                if track.appearance is not None:
                    seen.append((track, col))
                else:
                    track.appearance = GaussianAppearance.from_first(descriptor, cfg.appearance_prior_std, obs_std)
            if col not in tentative:
                track.state = TrackState.TRACKED
            track.last_frame = obs.frame_index
            track.vote(seg.category_id, scores[col], cfg.class_memory)
            categories[col] = track.category_id
            track.history = (track.history + [(obs.frame_index, float(x), float(y),
                                               float(np.sqrt(obs.areas[col])))])[-cfg.motion_history:]
        if seen:  # the appearance updates, stacked (bit for bit GaussianAppearance.updated)
            at = np.array([col for _, col in seen], np.int64)
            means, variances = GaussianAppearance.updated_batch(
                np.array([t.appearance.mean for t, _ in seen]), np.array([t.appearance.var for t, _ in seen]),
                obs.descriptors[at], obs_stds[at], cfg.appearance_process_std)
            for k, (track, _) in enumerate(seen):
                track.appearance = GaussianAppearance(means[k], variances[k])
        height, width = obs.size
        for tid in list(self.tracks):
            track = self.tracks[tid]
            if track.last_frame == obs.frame_index:
                continue
            track.motion = obs.predicted[tid]
            if track.state is TrackState.TENTATIVE or track.frames_unseen(obs.frame_index) > cfg.max_lost_frames or (
                    cfg.exit_margin >= 0 and motion.outside_frame(track.motion, height, width, cfg.exit_margin)):
                track.state = TrackState.REMOVED
                del self.tracks[tid]
            else:
                track.state = TrackState.LOST
        self.tracks = dict(sorted(self.tracks.items()))

        if obs.uses_embeddings and self.embedding_dim is None:
            self.embedding_dim = obs.descriptors.shape[1]
        self.size, self.last_frame_index = obs.size, obs.frame_index
        self._carry_index(obs, matches)
        for col in tentative:  # held in the state (the next frame may confirm it), not output
            obs.dropped[col] = True
        return self._output_frame(obs, matches, [self.tracks[matches[c]].score if c in matches else sc
                                                 for c, sc in enumerate(scores)], categories)

    def _starts_tentative(self, obs: _Observation, col: int) -> bool:
        """Whether the unmatched segment ``col`` starts a tentative track (``tentative_max_area``):
        small, and not on the video's first frame (where every object is new)."""
        limit = self.config.tentative_max_area
        return limit > 0 and self.last_frame_index is not None and \
            obs.areas[col] <= limit * obs.size[0] * obs.size[1]

    def _carry_index(self, obs: _Observation, matches: dict[int, int]) -> None:
        """The next frame's previous index map: matched segments, plus the warped masks of lost
        tracks unseen for at most ``carry_lost_frames`` frames."""
        carried = []
        if obs.warped is not None and self.config.carry_lost_frames > 0:
            for row, tid in enumerate(self.previous_track_of_index.tolist()):
                track = self.tracks.get(tid)
                if tid and track is not None and track.state is TrackState.LOST \
                        and track.frames_unseen(obs.frame_index) <= self.config.carry_lost_frames:
                    carried.append((row, tid))
        free = np.concatenate([[True], ~obs.thing])
        self.previous_index = affinity.carry_lost_segments(
            obs.index, obs.warped, len(self.previous_track_of_index) - 1, np.array([r for r, _ in carried]), free) \
            if carried else obs.index
        self.previous_track_of_index = np.zeros(len(obs.segments) + 1 + len(carried), np.int64)
        for col, tid in matches.items():
            self.previous_track_of_index[col + 1] = tid
        for k, (_, tid) in enumerate(carried):
            self.previous_track_of_index[len(obs.segments) + 1 + k] = tid

    def _output_frame(self, obs: _Observation, matches: dict[int, int], scores: list[float],
                      categories: dict[int, int]) -> PanopticFrame:
        out_of_col = np.zeros(len(obs.segments) + 1, np.int32)
        merged: dict[int, SegmentInfo] = {}
        for col, seg in enumerate(obs.segments):
            if obs.dropped[col]:
                continue
            out_id = matches[col] if obs.thing[col] else seg.category_id + 1
            out_of_col[col + 1] = out_id
            bbox = seg.bbox if any(seg.bbox) else _exact_bbox(obs.index, col + 1)
            area = int(obs.areas[col])
            score = None if seg.score is None else scores[col]
            if out_id in merged:  # several stuff segments of one category become one segment
                prev = merged[out_id]
                bbox, area = _union_bbox(prev.bbox, bbox), prev.area + area
                score = prev.score if score is None else max(score, prev.score or 0.0)
            merged[out_id] = SegmentInfo(out_id, categories.get(col, seg.category_id), area, tuple(bbox),
                                         int(seg.iscrowd), score)
        ids = affinity.relabel(obs.index, out_of_col)
        return PanopticFrame(ids, [merged[k] for k in sorted(merged)])

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The whole tracker as (JSON-serialisable dict, named numpy arrays); see :meth:`from_state`."""
        meta = {"video_id": self.video_id, "config": self.config.to_json(), "next_track_id": self.next_track_id,
                "last_frame_index": self.last_frame_index, "size": self.size, "embedding_dim": self.embedding_dim,
                "tracks": [t.to_json() for t in self.tracks.values()]}
        arrays = {"previous_track_of_index": self.previous_track_of_index}
        if self.previous_index is not None:
            arrays["previous_index"] = self.previous_index
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "VideoTracker":
        tracker = cls(meta["video_id"], TrackerConfig.from_json(meta["config"]))
        tracker.next_track_id = int(meta["next_track_id"])
        tracker.last_frame_index = meta["last_frame_index"]
        tracker.size = None if meta["size"] is None else tuple(meta["size"])
        tracker.embedding_dim = meta["embedding_dim"]
        tracker.tracks = {t.track_id: t for t in map(Track.from_json, meta["tracks"])}
        tracker.previous_track_of_index = np.asarray(arrays["previous_track_of_index"], np.int64)
        tracker.previous_index = arrays.get("previous_index")
        return tracker


def _void_count(ids: np.ndarray) -> int:
    """Pixels of ``ids`` that are VOID (0): OpenCV's count of non-zero pixels where it takes the
    dtype (one pass, no ``(H, W)`` boolean temporary), else numpy."""
    if VOID == 0 and ids.size and ids.dtype in _CV_COUNT_DTYPES:
        return ids.size - cv2.countNonZero(ids)
    return int(np.count_nonzero(ids == VOID))


_CV_COUNT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16),
                    np.dtype(np.int32))


def _exact_bbox(index: np.ndarray, k: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(index == k)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _union_bbox(a, b) -> tuple[int, int, int, int]:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return x0, y0, x1 - x0, y1 - y0
