"""PQ of a segmentation host on held-out synthetic videos, with tubeflow's evaluator.

PQ (Kirillov et al., CVPR 2019) is VPQ with k = 0 (Kim et al., CVPR 2020): every annotated
frame is its own window. Frames come from :func:`operators.synth.generate_video` with
seeds the training corpus never uses (``HELD_OUT_SEED``), and the statistics are those of
:mod:`operators.metrics` — the same code that evaluates real corpora.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

import numpy as np

from operators.formats.categories import categories_by_id
from operators.formats.panoptic import PanopticFrame
from operators.metrics import VideoVpq, VpqStats, frame_table
from operators.segmentation.host import SegmentationHost
from operators.segmentation.postprocess import LABEL_DIVISOR, FrameSegments
from operators.training.loop import TRAIN_SCENARIOS

HELD_OUT_SEED = 777_000


def evaluate_host(host: SegmentationHost, videos_per_scenario: int = 2, frames: int = 10, height: int = 256,
                  width: int = 512, annotate_every: int = 5, scenarios: Sequence[str] = TRAIN_SCENARIOS,
                  seed: int = HELD_OUT_SEED) -> dict:
    """PQ / SQ / RQ (×100) over annotated frames of held-out videos, overall and per scenario."""
    from operators.synth import SynthConfig, generate_video

    categories = categories_by_id()
    per_scenario, parts = {}, []
    frames_seen, started = 0, time.time()
    for s, scenario in enumerate(scenarios):
        synth = SynthConfig(videos=videos_per_scenario, frames=frames, height=height, width=width,
                            seed=seed + 97 * s, annotate_every=annotate_every, scenario=scenario)
        scenario_parts = []
        for v in range(videos_per_scenario):
            video = VideoVpq(f"{scenario}/{synth.video_id(v)}", ks=(0,), stride=annotate_every)
            annotated = [f for f in generate_video(synth, v) if f.frame_index % annotate_every == 0]
            predictions = host.segment([f.rgb for f in annotated], [f.image_id for f in annotated])
            for f, pred in zip(annotated, predictions):
                video.update(frame_table(f.frame_index, f.panoptic.ids, f.panoptic.segments, pred.ids, pred.segments,
                                      gt_where=f.image_id, pred_where=f"prediction {f.image_id}"))
            frames_seen += len(annotated)
            scenario_parts.append(video.stats())
        per_scenario[scenario] = _summary(VpqStats.merge(scenario_parts), categories)
        parts += scenario_parts
    result = _summary(VpqStats.merge(parts), categories)
    result.update(per_scenario=per_scenario, frames=frames_seen, height=height, width=width, seed=seed,
                  videos_per_scenario=videos_per_scenario, seconds=round(time.time() - started, 1),
                  model_sha256=host.model_sha256)
    return result


def _summary(stats: VpqStats, categories) -> dict:
    groups = stats.result(categories, ks=(0,)).per_k[0]
    return {"pq": 100 * groups["all"]["pq"], "sq": 100 * groups["all"]["sq"], "rq": 100 * groups["all"]["rq"],
            "pq_things": 100 * groups["things"]["pq"], "pq_stuff": 100 * groups["stuff"]["pq"]}


def evaluate_builtin(weights_uri: str, **options) -> dict:
    """:func:`evaluate_host` of the built-in model with the weights at ``weights_uri``."""
    return evaluate_host(SegmentationHost("builtin", weights_uri), **options)


def evaluate_association(host: SegmentationHost, scenarios: Sequence[str] = ("occlusion", "similar"),
                         videos: int = 2, frames: int = 20, height: int = 256, width: int = 512,
                         annotate_every: int = 5, seed: int = HELD_OUT_SEED + 50_000, segments: str = "gt",
                         tracker_config=None) -> dict:
    """VPQ of the tracker with the host's learned embeddings vs. the tracker's colour
    descriptors (no embeddings), per scenario.

    ``segments="gt"``: the tracker gets the GT segments of every frame with per-frame ids
    (identities removed), and the learned embeddings are the network's MaskPool over those
    masks — this isolates association from segmentation quality. ``segments="model"``: the
    host's own per-frame segments and embeddings. Same segments, same DIS flow, same tracker
    settings in both arms (the hybrid :class:`VideoTracker` with ``tracker_config``, default
    :class:`TrackerConfig`; with ``pixel_weight=0`` appearance alone decides): only the appearance
    cue differs (the hybrid, not the default composite: the learned network ignores embeddings).
    Returns ``{scenario: {"embeddings": {...}, "colour": {...}}}`` with VPQ ×100 (mean over
    k ∈ {0, 5, 10, 15}), VPQ-things and VPQ per k.
    """
    from operators.association.frame_loop import track_frames
    from operators.association.track import TrackerFrame
    from operators.association.tracker import VideoTracker
    from operators.flow.dis import DisFlow
    from operators.metrics import DEFAULT_KS
    from operators.synth import SynthConfig, generate_video

    categories, flow = categories_by_id(), DisFlow("fast")
    out = {}
    for s, scenario in enumerate(scenarios):
        synth = SynthConfig(videos=videos, frames=frames, height=height, width=width, seed=seed + 97 * s,
                            annotate_every=annotate_every, scenario=scenario)
        parts: dict[str, list[VpqStats]] = {"embeddings": [], "colour": []}
        for v in range(videos):
            video = list(generate_video(synth, v))
            if segments == "gt":
                panoptic = [_without_identities(f.panoptic, f.frame_index) for f in video]
                predictions = [FrameSegments(p.ids, p.segments, e) for p, e in
                               zip(panoptic, host.embed_segments([f.rgb for f in video], panoptic))]
            else:
                predictions = host.segment([f.rgb for f in video], [f.image_id for f in video])
            # the flow once per video, for both arms: the frames carry it into the one frame loop
            flows = [None] + [flow(video[t].rgb, video[t - 1].rgb) for t in range(1, len(video))]
            for mode in parts:
                frames = (TrackerFrame(f.frame_index, pred.to_panoptic_frame(), f.rgb, fl,
                                       {seg.id: row for seg, row in zip(pred.segments, pred.embeddings)}
                                       if mode == "embeddings" else None, f.image_id)
                          for f, pred, fl in zip(video, predictions, flows))
                stats = VideoVpq(f"{scenario}/{v}", ks=DEFAULT_KS, stride=annotate_every)
                for (frame, tracked), f in zip(track_frames(VideoTracker(f"{scenario}/{v}", tracker_config), frames),
                                               video):
                    if f.frame_index % annotate_every == 0:
                        stats.update(frame_table(f.frame_index, f.panoptic.ids, f.panoptic.segments, tracked.ids,
                                              tracked.segments, gt_where=f.image_id))
                parts[mode].append(stats.stats())
        out[scenario] = {}
        for mode, stats_list in parts.items():
            result = VpqStats.merge(stats_list).result(categories, DEFAULT_KS)
            out[scenario][mode] = {"vpq": 100 * result.vpq, "vpq_things": 100 * result.vpq_thing,
                                   "per_k": {k: 100 * result.per_k[k]["all"]["pq"] for k in DEFAULT_KS}}
    return out


def _without_identities(frame: PanopticFrame, salt: int) -> PanopticFrame:
    """The same segments with ids that carry no identity: things renumbered per frame in a
    shuffled order (``1000 · (category + 1) + k``), stuff and crowd ids unchanged."""
    rng = np.random.default_rng(salt)
    things = [s for s in frame.segments if s.id % LABEL_DIVISOR != 0]
    order = rng.permutation(len(things))
    new_id = {s.id: s.id for s in frame.segments}
    for rank, index in enumerate(order):
        s = things[index]
        new_id[s.id] = LABEL_DIVISOR * (s.category_id + 1) + 1 + rank
    lut_keys = np.array(list(new_id), np.int64)
    ids = frame.ids.copy()
    for old_id in lut_keys[np.argsort(lut_keys)]:
        ids[frame.ids == old_id] = new_id[int(old_id)]
    return PanopticFrame(ids, [replace(s, id=new_id[s.id]) for s in frame.segments])
