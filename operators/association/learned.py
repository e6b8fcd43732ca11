"""The learned tracker: association, track births and track scores by a recurrent graph network.

Johnander et al., *Learning Video Instance Segmentation with Recurrent Graph Neural Networks*
(GCPR 2021 / IJCV 2022). :class:`LearnedTracker` has the interface of the hybrid
:class:`~operators.association.tracker.VideoTracker` (``update`` per frame, ``state`` /
``from_state`` for checkpoints) and shares its observation stage — the compact index map, the
flow-warped previous masks and their overlaps, the Gaussian appearance, the motion model's
predictions with the camera's motion taken out — and its commit (motion and appearance updates,
lost / removed states, the carried masks of lost tracks). What it replaces is the decision:

1. **Graph.** Every live track (tracked or lost) × every thing segment of the frame whose
   class may match it (same or confusable class) is an edge. Features
   (:func:`graph_features`): per track its class, score, size, frames since seen, age,
   predicted position and its uncertainty; per detection its class, score, size, position;
   per edge the warped-mask overlap of the pixel tracker, the motion model's Mahalanobis
   distance and offset, the size ratio, the appearance log-likelihood under the track's
   Gaussian, class agreement and frames since seen.
2. **Network** (:class:`~operators.association.learned_model.TrackGraphNet`) → match and
   new-track probabilities.
3. **Assignment**: Hungarian on the match probabilities with a minimum
   (``match_threshold``); a track no detection matches with at least that probability goes
   lost (and is removed after ``max_lost_frames`` frames, or when it leaves the frame). An
   unmatched detection starts a track when its new-track probability reaches
   ``new_track_threshold``; below it the segment is dropped as spurious (VOID).
4. **Recurrent update** of each track's embedding (GRU), and the **track heads**: the output
   class (among the classes the detection's class may be confused with) and confidence of
   every tracked segment come from its track's updated embedding.

Appearance is the colour descriptor's Gaussian (what the network was trained with): segment
embeddings a segmenter gives are not used by this tracker (their likelihoods have another scale).

Inference is ``torch.no_grad`` on one thread. The weights file (``torch.save`` of
``{"meta": …, "state": state_dict}``, read with ``weights_only=True``) carries the network's
shape, its feature switches and the two thresholds.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from operators.association import affinity, motion
from operators.association.assignment import assign
from operators.association.config import TrackerConfig
from operators.association.track import Track, TrackerFrame
from operators.association.tracker import VideoTracker, _Observation
from operators.errors import InputError
from operators.formats.categories import CONFUSABLE_THINGS
from operators.formats.panoptic import PanopticFrame

LEARNED_WEIGHTS = str(Path(__file__).resolve().parent / "weights" / "learned_tracker.pt")
"""The shipped weights (``TrackerConfig.learned_weights = ""`` means these)."""
N_CLASS_FEATURES = 8
_UNSEEN_CAP = 30.0


@dataclass
class LearnedModel:
    """A loaded network and what came with it: ``meta`` (shape, switches, thresholds), ``sha256``."""

    net: object
    meta: dict
    sha256: str
    path: str

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(self.meta["classes"])

    @property
    def use_overlap(self) -> bool:
        return bool(self.meta.get("overlap", True))


_LOADED: dict[str, LearnedModel] = {}


def _unusable_weights(path: str, problem: str) -> InputError:
    """The one-line error of a weights file that cannot be used; for the shipped file (which the
    default tracker, the composite, loads) it says how to run without it. One line: torch's own
    messages can span several."""
    problem = " ".join(problem.split())
    if os.path.abspath(path) == os.path.abspath(LEARNED_WEIGHTS):
        problem += ("; these are the shipped weights, which the default tracker (composite) needs: reinstall "
                    "tubeflow, or run without the network with --tracker hybrid")
    return InputError(path, problem)


def weights_path(config: TrackerConfig) -> str:
    return config.learned_weights or LEARNED_WEIGHTS


def _read_weights(path: str) -> bytes:
    """The bytes of a weights file, or the one-line error of one that cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _unusable_weights(path, f"learned tracker weights not readable: {exc.strerror or exc}") from None


def weights_sha256(config: TrackerConfig) -> str:
    """SHA-256 of the learned tracker's weights file (for the label run's config hash)."""
    return hashlib.sha256(_read_weights(weights_path(config))).hexdigest()


def check_weights(path: str) -> None:
    """Refuse an unusable weights file with one :class:`InputError`, before any video runs.

    A file with its training card beside it (``<path>.json``, written by ``tubeflow train --tracker``
    and shipped with the default weights) is checked against the card's SHA-256 without torch: the
    label driver then needs no torch (seconds of import; only the association processes load the
    network). A file without a card is loaded (:func:`load_model`), which imports torch here."""
    sha = hashlib.sha256(_read_weights(path)).hexdigest()
    try:
        with open(path + ".json", "rb") as f:
            card = json.loads(f.read())
    except OSError:  # no card: the network itself tells
        load_model(path)
        return
    except ValueError as exc:
        raise _unusable_weights(path, f"its card {os.path.basename(path)}.json is not a weights card "
                                      f"(JSON: {exc})") from None
    recorded = card.get("sha256") if isinstance(card, dict) else None
    if recorded != sha:
        raise _unusable_weights(path, f"not the learned tracker weights its card {os.path.basename(path)}.json "
                                      f"describes (SHA-256 {sha[:12]}…, the card says {str(recorded)[:12]}…): "
                                      "damaged or replaced")


def load_model(path: str) -> LearnedModel:
    """The network of a weights file, loaded once per process (keyed by path and content)."""
    import torch

    from operators.association.learned_model import TrackGraphNet

    data = _read_weights(path)
    sha = hashlib.sha256(data).hexdigest()
    key = f"{os.path.abspath(path)}:{sha}"
    if key in _LOADED:
        return _LOADED[key]
    import io

    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        meta = dict(blob["meta"])
        net = TrackGraphNet(tuple(meta["classes"]), meta["width"], meta["state"], meta["blocks"], meta["recurrent"])
        net.load_state_dict(blob["state"])
    except Exception as exc:  # noqa: BLE001 — any failure means "not a learned tracker weights file"
        raise _unusable_weights(path, f"not a learned tracker weights file ({type(exc).__name__}: {exc})") from None
    net.eval()
    model = LearnedModel(net, meta, sha, path)
    _LOADED[key] = model
    return model


@dataclass
class FrameGraph:
    """One frame's bipartite graph (T live tracks × D thing segments), as numpy arrays.

    ``track_ids (T,) int64``; ``columns (D,) int64``: positions of the detections in the
    frame's ``segments``; ``track_features (T, 17)``, ``detection_features (D, 13)``,
    ``edge_features (T, D, 11)`` float32; ``mask (T, D)`` float32 (1 = class-compatible pair).
    """

    track_ids: np.ndarray
    columns: np.ndarray
    track_features: np.ndarray
    detection_features: np.ndarray
    edge_features: np.ndarray
    mask: np.ndarray
    extra: dict = field(default_factory=dict)


def _one_hot(categories: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    out = np.zeros((len(categories), N_CLASS_FEATURES), np.float32)
    position = {c: k for k, c in enumerate(classes[:N_CLASS_FEATURES])}
    for i, c in enumerate(categories):
        if int(c) in position:
            out[i, position[int(c)]] = 1.0
    return out


def graph_features(tracker: VideoTracker, obs: _Observation, classes: tuple[int, ...],
                   use_overlap: bool = True) -> FrameGraph:
    """The features of the graph of ``obs`` against ``tracker``'s live tracks (see the module doc)."""
    cfg = tracker.config
    height, width = obs.size
    norm = float(np.sqrt(height * width))
    cols = np.flatnonzero(obs.thing).astype(np.int64)
    tracks: list[Track] = list(tracker.tracks.values())
    n_t, n_d = len(tracks), cols.size
    track_ids = np.array([t.track_id for t in tracks], np.int64)

    det_cat = np.array([obs.segments[c].category_id for c in cols], np.int64)
    det_score = np.array([1.0 if obs.segments[c].score is None else obs.segments[c].score for c in cols])
    z = obs.boxes[cols] if n_d else np.zeros((0, 3))
    det_size = np.maximum(z[:, 2], 1.0)
    border = np.minimum.reduce([z[:, 0], z[:, 1], width - z[:, 0], height - z[:, 1]]) if n_d else np.zeros(0)
    det_f = np.zeros((n_d, 13), np.float32)
    det_f[:, :8] = _one_hot(det_cat, classes)
    det_f[:, 8] = det_score
    det_f[:, 9] = np.log(det_size / norm)
    det_f[:, 10] = z[:, 0] / width
    det_f[:, 11] = z[:, 1] / height
    det_f[:, 12] = np.clip(border / det_size, 0, 5) / 5

    row_of = {int(tid): r for r, tid in enumerate(tracker.previous_track_of_index[1:]) if tid}
    trk_f = np.zeros((n_t, 17), np.float32)
    edge_f = np.zeros((n_t, n_d, 11), np.float32)
    mask = np.zeros((n_t, n_d), np.float32)
    if n_t:
        states = [obs.predicted[t.track_id] for t in tracks]
        means = np.array([m.mean for m in states])
        covs = np.array([m.cov for m in states])
        pred_size = np.maximum(means[:, 2], 1.0)
        unseen = np.array([t.frames_unseen(obs.frame_index) for t in tracks], np.float64)
        trk_cat = np.array([t.category_id for t in tracks], np.int64)
        has_mask = np.array([t.track_id in row_of for t in tracks])
        trk_f[:, :8] = _one_hot(trk_cat, classes)
        trk_f[:, 8] = [t.score for t in tracks]
        trk_f[:, 9] = np.log(pred_size / norm)
        trk_f[:, 10] = np.minimum(unseen, _UNSEEN_CAP) / 10
        trk_f[:, 11] = unseen == 1
        trk_f[:, 12] = np.minimum([obs.frame_index - t.first_frame for t in tracks], _UNSEEN_CAP) / _UNSEEN_CAP
        trk_f[:, 13] = has_mask
        trk_f[:, 14] = means[:, 0] / width
        trk_f[:, 15] = means[:, 1] / height
        trk_f[:, 16] = np.log(np.sqrt(covs[:, 0, 0] + covs[:, 1, 1]) / pred_size + 1e-3)
    if n_t and n_d:
        gate = affinity.category_gate(trk_cat, det_cat, cfg.confusable_categories)
        mask[:] = gate
        if use_overlap and obs.overlap is not None:
            with_mask = np.flatnonzero(has_mask)
            rows = [row_of[tracks[i].track_id] for i in with_mask]
            edge_f[with_mask, :, 0] = obs.overlap[np.ix_(rows, cols)]
            edge_f[:, :, 1] = has_mask[:, None]
        d2 = motion.mahalanobis_sq(means, covs, z, cfg.motion_noise)
        edge_f[:, :, 2] = np.log1p(np.minimum(d2, 1e6)) / 5
        edge_f[:, :, 3] = np.clip((z[None, :, 0] - means[:, None, 0]) / pred_size[:, None], -10, 10) / 5
        edge_f[:, :, 4] = np.clip((z[None, :, 1] - means[:, None, 1]) / pred_size[:, None], -10, 10) / 5
        edge_f[:, :, 5] = np.log(det_size[None, :] / pred_size[:, None])
        with_app = [i for i, t in enumerate(tracks) if t.appearance is not None]
        if with_app and obs.descriptors is not None:
            app_means = np.array([tracks[i].appearance.mean for i in with_app])
            app_var = np.array([tracks[i].appearance.var for i in with_app])
            looks = affinity.gaussian_affinity(obs.descriptors[cols], app_means, app_var,
                                               tracker._obs_std(obs.areas[cols]) ** 2)
            edge_f[with_app, :, 6] = np.maximum(np.log(np.maximum(looks, 1e-30)), -20.0) / 5
            edge_f[with_app, :, 10] = looks
        same = trk_cat[:, None] == det_cat[None, :]
        edge_f[:, :, 7] = same
        edge_f[:, :, 8] = gate & ~same
        edge_f[:, :, 9] = (np.minimum(unseen, _UNSEEN_CAP) / 10)[:, None]
    return FrameGraph(track_ids, cols, trk_f, det_f, edge_f, mask)


@contextlib.contextmanager
def _one_thread():
    """torch on one thread for the network's small matrices (more threads only wait for each
    other on a shared machine), then the caller's setting again (a segmenter may share the process)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def split_assignment(graph: FrameGraph, matches: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame's final ``{column: track id}`` as the recurrent update takes it: (the detection each
    of the graph's tracks took ``(T,)``, −1 for none; the detections that started tracks ``(N,)``;
    their new track ids ``(N,)``)."""
    row_of_track = {int(t): i for i, t in enumerate(graph.track_ids)}
    det_of_col = {int(c): k for k, c in enumerate(graph.columns)}
    matched = np.full(len(graph.track_ids), -1, np.int64)
    new_detections, new_ids = [], []
    for col, tid in sorted(matches.items()):
        if tid in row_of_track:
            matched[row_of_track[tid]] = det_of_col[col]
        else:
            new_detections.append(det_of_col[col])
            new_ids.append(tid)
    return matched, np.array(new_detections, np.int64), np.array(new_ids, np.int64)


def _group_of(categories: tuple[tuple[int, ...], ...]) -> dict[int, tuple[int, ...]]:
    return {c: g for g in categories for c in g}


class LearnedTracker(VideoTracker):
    """Tracker state of one video, decided by the learned network (see the module doc).

    Deterministic: same frames and weights in, same ids out. ``model``: a loaded
    :class:`LearnedModel` (default: the one ``config.learned_weights`` names, or the shipped one).
    """

    METHOD = "learned"

    def __init__(self, video_id: str, config: TrackerConfig | None = None, model: LearnedModel | None = None):
        super().__init__(video_id, config)
        self.model = model if model is not None else load_model(weights_path(self.config))
        self.track_state: dict[int, np.ndarray] = {}   # track id → (state,) float32 recurrent embedding
        self.learned_class: dict[int, int] = {}         # track id → class of the class head
        self.learned_score: dict[int, float] = {}       # track id → confidence of the score head
        self._pending = None
        confusable = self.config.confusable_categories or CONFUSABLE_THINGS
        self._group = _group_of(confusable)
        self._allowed: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ per frame
    def update(self, frame: TrackerFrame) -> PanopticFrame:
        obs, graph = self._observe_graph(frame)
        matches, drop = self._decide(obs, graph)
        for col in drop:
            obs.thing[col], obs.dropped[col] = False, True
        return self._commit(obs, matches)

    def _observe_graph(self, frame: TrackerFrame) -> tuple[_Observation, FrameGraph]:
        """The frame's observation and its graph for the network (kept for the recurrent update
        at commit)."""
        if frame.embeddings:  # the network was trained on the colour descriptor's likelihoods
            frame = replace(frame, embeddings=None)
        obs = self._observe(frame)
        self._current_graph = graph_features(self, obs, self.model.classes, self.model.use_overlap)
        return obs, self._current_graph

    def _decide(self, obs: _Observation, graph: FrameGraph) -> tuple[dict[int, int], list[int]]:
        """(matches {column: track id}, columns dropped as spurious) from the network."""
        meta = self.model.meta
        match, p_new = self._network(graph)
        pairs = assign(match, graph.mask > 0, "hungarian", float(meta["match_threshold"]))
        matches = {int(graph.columns[j]): int(graph.track_ids[i]) for i, j in pairs}
        drop = [int(c) for k, c in enumerate(graph.columns)
                if int(c) not in matches and p_new[k] < float(meta["new_track_threshold"])]
        return matches, drop

    def _network(self, graph: FrameGraph) -> tuple[np.ndarray, np.ndarray]:
        """The network on ``graph``: (match probabilities ``(T, D)`` float64, 0 off the class mask;
        new-track probabilities ``(D,)``); keeps what the recurrent update needs."""
        import torch

        n_t = len(graph.track_ids)
        state = np.stack([self.track_state.get(int(t), np.zeros(self.model.net.state_size, np.float32))
                          for t in graph.track_ids]) if n_t else np.zeros((0, self.model.net.state_size), np.float32)
        with torch.no_grad(), _one_thread():
            tensors = [torch.from_numpy(a) for a in (graph.track_features, state, graph.detection_features,
                                                     graph.edge_features, graph.mask)]
            match_logit, new_logit, t, d, e = self.model.net.associate(*tensors)
        self._pending = (torch.from_numpy(state), t, d, e)
        match = torch.sigmoid(match_logit).numpy().astype(np.float64) * graph.mask
        return match, torch.sigmoid(new_logit).numpy()

    def _starts_tentative(self, obs: _Observation, col: int) -> bool:
        """Never: the network's new-track head already decided which segments start tracks."""
        return False

    def _output_frame(self, obs: _Observation, matches: dict[int, int], scores: list[float],
                      categories: dict[int, int]) -> PanopticFrame:
        """Called by the commit once ids are final: the recurrent update, the track heads, the frame."""
        self._recurrent_update(obs, matches)
        classes = self.model.classes
        scores = list(scores)
        for col, tid in matches.items():
            detected = obs.segments[col].category_id
            if tid in self.learned_class and detected in classes:
                categories[col] = self.learned_class[tid]
            if tid in self.learned_score and obs.segments[col].score is not None:
                scores[col] = self.learned_score[tid]
        return super()._output_frame(obs, matches, scores, categories)

    def _recurrent_update(self, obs: _Observation, matches: dict[int, int]) -> None:
        import torch

        graph, pending = self._current_graph, self._pending
        matched, new_detections, new_ids = split_assignment(graph, matches)
        state, t, d, e = pending
        with torch.no_grad(), _one_thread():
            existing, created = self.model.net.update_state(state, t, d, e, torch.from_numpy(matched),
                                                            torch.from_numpy(new_detections))
            ids = [int(x) for x in graph.track_ids] + new_ids.tolist()
            states = torch.cat([existing, created], 0)
            score_logit, class_logit = self.model.net.track_heads(states)
        # python floats (exactly the float32 values) for the per-track loop below
        states = states.numpy().astype(np.float32)
        score, class_logit = torch.sigmoid(score_logit).numpy().tolist(), class_logit.numpy().tolist()
        classes = self.model.classes
        detection_class = {tid: col for col, tid in matches.items()}
        for k, tid in enumerate(ids):
            if tid not in self.tracks:  # removed by this frame's commit
                continue
            self.track_state[tid] = states[k]
            self.learned_score[tid] = score[k]
            if tid in detection_class:
                allowed = self._allowed_classes(obs.segments[detection_class[tid]].category_id)
                if allowed:
                    self.learned_class[tid] = int(classes[max(allowed, key=class_logit[k].__getitem__)])
        for store in (self.track_state, self.learned_class, self.learned_score):
            for tid in [x for x in store if x not in self.tracks]:
                del store[tid]

    def _allowed_classes(self, detected: int) -> list[int]:
        """Positions in the class head of the classes a detection of class ``detected`` may be."""
        if detected not in self._allowed:
            group = self._group.get(detected, (detected,))
            self._allowed[detected] = [i for i, c in enumerate(self.model.classes) if c in group]
        return self._allowed[detected]

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta, arrays = super().state()
        ids = sorted(self.track_state)
        meta["learned"] = {"weights_sha256": self.model.sha256,
                           "class": [[t, self.learned_class[t]] for t in sorted(self.learned_class)],
                           "score": [[t, self.learned_score[t]] for t in sorted(self.learned_score)]}
        arrays["learned_track_ids"] = np.array(ids, np.int64)
        arrays["learned_track_state"] = np.array([self.track_state[t] for t in ids], np.float32).reshape(
            len(ids), self.model.net.state_size)
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "LearnedTracker":
        base = VideoTracker.from_state(meta, arrays)
        tracker = cls(base.video_id, base.config)
        learned = meta.get("learned")
        if learned is None:
            raise InputError("association checkpoint", f"video {base.video_id}: no learned tracker state in the checkpoint")
        if learned["weights_sha256"] != tracker.model.sha256:
            raise InputError("association checkpoint", f"video {base.video_id}: written with learned tracker weights "
                                                       f"{learned['weights_sha256'][:12]}…, now "
                                                       f"{tracker.model.sha256[:12]}… are configured")
        for name in ("next_track_id", "last_frame_index", "size", "embedding_dim", "tracks", "previous_track_of_index",
                     "previous_index"):
            setattr(tracker, name, getattr(base, name))
        tracker.track_state = {int(t): np.asarray(s, np.float32) for t, s in
                               zip(arrays["learned_track_ids"], arrays["learned_track_state"])}
        tracker.learned_class = {int(t): int(c) for t, c in learned["class"]}
        tracker.learned_score = {int(t): float(s) for t, s in learned["score"]}
        return tracker
