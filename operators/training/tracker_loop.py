"""Training the learned tracker (``tubeflow train --tracker``): the recipe, the losses, the loop.

Losses of the recurrent graph-network tracker (Johnander et al., GCPR 2021, Sec. 3.4), per
frame of a recorded clip (:mod:`operators.training.tracker_data`), summed over the clip's
frames and averaged over its detections:

* **edge**: binary cross-entropy of every class-compatible (track, detection) pair's match
  logit against "this detection is this track's identity" (positives weighted ×``pos_weight``:
  a detection has one true edge among many);
* **new track**: binary cross-entropy of each detection's new-track logit against "its
  identity has no live track" (spurious blobs: 0 — they should neither match nor start a track);
* **track score / class**: after the recurrent update along the true assignment, each track that
  took a detection: BCE of its confidence against "a true object", cross-entropy of its class
  against its identity's true class.

The recurrent state is carried through each clip along the true assignment (teacher forcing;
back-propagation through the whole clip). Adam, a cosine learning-rate decay, one thread,
``torch.manual_seed``: the same seed gives the same weights.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from operators.formats.categories import CITYSCAPES_THING_IDS
from operators.training.tracker_data import FrameRecord, record_clip, training_clips


@dataclass(frozen=True)
class TrackerTrainConfig:
    """The recipe of the learned tracker (defaults: the shipped weights')."""

    seed: int = 0
    clips: int = 160
    frames: int = 24
    epochs: int = 12
    lr: float = 3e-3
    width: int = 32
    state: int = 32
    blocks: int = 2
    recurrent: bool = True
    overlap: bool = True
    pos_weight: float = 4.0
    loss_weights: dict = field(default_factory=lambda: {"edge": 1.0, "new": 1.0, "score": 0.5, "class": 1.0})
    match_threshold: float = 0.5
    new_track_threshold: float = 0.05
    classes: tuple[int, ...] = CITYSCAPES_THING_IDS

    def to_json(self) -> dict:
        return asdict(self)


def record_clips(config: TrackerTrainConfig, progress=None) -> list[list[FrameRecord]]:
    """Every clip of the recipe, recorded (the expensive part: rendering, DIS flow, observation)."""
    out = []
    for k, spec in enumerate(training_clips(config.seed, config.clips, config.frames)):
        out.append(record_clip(spec, config.classes))
        if progress and (k + 1) % 20 == 0:
            progress(f"recorded {k + 1}/{config.clips} clips")
    return out


def _tensors(record: FrameRecord, overlap: bool):
    import torch

    g = record.graph
    edges = g.edge_features
    if not overlap:  # the ablation without the pixel tracker's overlap: the feature and its flag are zero
        edges = edges.copy()
        edges[..., :2] = 0.0
    return (torch.from_numpy(g.track_features), torch.from_numpy(g.detection_features), torch.from_numpy(edges),
            torch.from_numpy(g.mask))


def clip_loss(net, clip: list[FrameRecord], config: TrackerTrainConfig) -> tuple[object, dict[str, float]]:
    """The summed losses of one clip (a scalar tensor) and their parts (floats)."""
    import torch
    import torch.nn.functional as F

    state_of: dict[int, torch.Tensor] = {}
    parts = {"edge": 0.0, "new": 0.0, "score": 0.0, "class": 0.0}
    total = torch.zeros(())
    detections = max(1, sum(len(r.graph.columns) for r in clip))
    weights = config.loss_weights
    for record in clip:
        g = record.graph
        track_f, det_f, edge_f, mask = _tensors(record, config.overlap)
        state = torch.stack([state_of.get(int(t), torch.zeros(net.state_size)) for t in g.track_ids]) \
            if len(g.track_ids) else torch.zeros((0, net.state_size))
        match, new, t, d, e = net.associate(track_f, state, det_f, edge_f, mask)
        terms = {}
        if mask.sum() > 0:
            target = torch.from_numpy(record.edge_target)
            bce = F.binary_cross_entropy_with_logits(match, target, reduction="none",
                                                     pos_weight=torch.tensor(config.pos_weight))
            terms["edge"] = (bce * mask).sum()
        if len(g.columns):
            terms["new"] = F.binary_cross_entropy_with_logits(new, torch.from_numpy(record.new_target), reduction="sum")
        existing, created = net.update_state(state, t, d, e, torch.from_numpy(record.matched),
                                             torch.from_numpy(record.new_detections))
        # the tracks that took a detection this frame, and that detection
        rows = np.flatnonzero(record.matched >= 0)
        dets = np.concatenate([record.matched[rows], record.new_detections]).astype(np.int64)
        if dets.size:
            states = torch.cat([existing[torch.from_numpy(rows)], created], 0)
            score, classes = net.track_heads(states)
            terms["score"] = F.binary_cross_entropy_with_logits(
                score, torch.from_numpy(record.true_detection[dets]), reduction="sum")
            cls_target = torch.from_numpy(record.detection_class[dets])
            if (cls_target >= 0).any():
                terms["class"] = F.cross_entropy(classes[cls_target >= 0], cls_target[cls_target >= 0], reduction="sum")
        for name, value in terms.items():
            total = total + weights[name] * value
            parts[name] += float(value.detach()) / detections
        state_of = {int(tid): existing[i] for i, tid in enumerate(g.track_ids)}
        state_of.update({int(tid): created[k] for k, tid in enumerate(record.new_track_ids)})
    return total / detections, parts


def train_tracker(config: TrackerTrainConfig, clips: list[list[FrameRecord]], log=print):
    """Train on recorded ``clips``; returns (network, loss history per epoch)."""
    import torch

    from operators.association.learned_model import TrackGraphNet

    torch.manual_seed(config.seed)
    torch.set_num_threads(1)
    net = TrackGraphNet(config.classes, config.width, config.state, config.blocks, config.recurrent)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    steps = config.epochs * len(clips)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(config.seed)
    history = []
    for epoch in range(config.epochs):
        started = time.time()
        sums = {"loss": 0.0, "edge": 0.0, "new": 0.0, "score": 0.0, "class": 0.0}
        for k in rng.permutation(len(clips)):
            loss, parts = clip_loss(net, clips[k], config)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            sums["loss"] += float(loss.detach())
            for name, value in parts.items():
                sums[name] += value
        row = {"epoch": epoch, **{k: round(v / len(clips), 5) for k, v in sums.items()},
               "seconds": round(time.time() - started, 1)}
        history.append(row)
        log(f"epoch {epoch}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "epoch"))
    net.eval()
    return net, history


def weights_bytes(net, config: TrackerTrainConfig, extra: dict | None = None) -> bytes:
    """The weights file: ``{"meta": shape, switches, thresholds, recipe; "state": state_dict}``."""
    import torch

    meta = {**net.describe(), "overlap": config.overlap, "match_threshold": config.match_threshold,
            "new_track_threshold": config.new_track_threshold, **(extra or {})}
    buf = io.BytesIO()
    torch.save({"meta": meta, "state": net.state_dict()}, buf)
    return buf.getvalue()


def train_from_scratch(config: TrackerTrainConfig, progress=print) -> tuple[bytes, dict]:
    """Record the recipe's clips, train, and return (weights file bytes, a log: recipe, history,
    the seconds of each phase, the machine's load)."""
    import os

    import cv2

    cv2.setNumThreads(1)  # DIS flow of the recording on one thread, like the network
    started, load_before = time.time(), os.getloadavg()
    clips = record_clips(config, progress)
    recorded = time.time()
    progress(f"recorded {len(clips)} clips ({sum(len(c) for c in clips)} frames) in {recorded - started:.0f} s")
    net, history = train_tracker(config, clips, progress)
    weights = weights_bytes(net, config, {"recipe": json.dumps(config.to_json())})
    log = {"config": config.to_json(), "history": history, "record_seconds": round(recorded - started, 1),
           "train_seconds": round(time.time() - recorded, 1), "wall_seconds": round(time.time() - started, 1),
           "load_average_1_5_15min": {"start": [round(x, 2) for x in load_before],
                                      "end": [round(x, 2) for x in os.getloadavg()]}}
    return weights, log
