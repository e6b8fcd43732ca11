"""Tracking quality on the synthetic corpus: VPQ and ID switches.

* Fast (normal suite): scrambled ground truth on a small clip → every identity recovered.
* Slow (``make test-slow``, or ``python tests/test_association_quality.py`` for the table):
  (a) scrambled GT → VPQ ≥ 97 and VPQ-Th at k = 15 ≥ 95;
  (b) noisy per-frame segmentation → the hybrid tracker's ablation pixel-only / instance-only /
  hybrid / hybrid + memory (``method="hybrid"``), and the default tracker (the composite);
  hybrid + memory and the default must each beat both single trackers on VPQ-Th (k = 15) on
  the occlusion scenario.

VPQ is :mod:`operators.metrics` (Kim et al., CVPR 2020; the official evaluator's rules):
annotated frames every 5th, k ∈ {0, 5, 10, 15}. ID switches are CLEAR-MOT's IDSW on masks.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from operators.association import TrackerConfig, TrackerFrame
from operators.association.methods import make_tracker
from operators.association.frame_loop import track_frames
from operators.flow.dis import DisFlow
from operators.formats.categories import CITYSCAPES_CATEGORIES, categories_by_id
from operators.formats.panoptic import PanopticFrame, SegmentInfo
from operators.metrics import VideoVpq, VpqStats, frame_table, tracking

THINGS = {c.id for c in CITYSCAPES_CATEGORIES if c.isthing}
KS = (0, 5, 10, 15)

HYBRID = TrackerConfig(method="hybrid")
ABLATION = {   # the hybrid's cues (HybridTracker's single trackers), then the default tracker
    "pixel only": TrackerConfig(method="hybrid", instance_weight=0.0, max_lost_frames=0),
    "instance only": TrackerConfig(method="hybrid", pixel_weight=0.0, max_lost_frames=0),
    "hybrid": TrackerConfig(method="hybrid", max_lost_frames=0),
    "hybrid + memory": HYBRID,
    "composite (default)": TrackerConfig(),
}


# ---------------------------------------------------------------- metrics
def vpq(videos: list[tuple[list[PanopticFrame], list[PanopticFrame]]], annotate_every: int = 5) -> dict:
    """{'vpq', 'vpq_th', 'vpq_st', k: (all, th, st)} in percent, by :mod:`operators.metrics`,
    from (GT frames, predicted frames) of the *annotated* frames of each video."""
    parts = []
    for v, (gts, preds) in enumerate(videos):
        video = VideoVpq(str(v), KS, annotate_every)
        for i, (gt, pred) in enumerate(zip(gts, preds)):
            video.update(frame_table(i * annotate_every, gt.ids, gt.segments, pred.ids, pred.segments))
        parts.append(video.stats())
    r = VpqStats.merge(parts).result(categories_by_id(), KS)
    out = {k: tuple(100 * r.per_k[k][g]["pq"] for g in ("all", "things", "stuff")) for k in KS}
    out.update(vpq=100 * r.vpq, vpq_th=100 * r.vpq_thing, vpq_st=100 * r.vpq_stuff)
    return out


def id_switches(gts: list[PanopticFrame], preds: list[PanopticFrame]) -> tuple[int, int]:
    """(ID switches, GT thing tracks): CLEAR-MOT's IDSW on masks (:mod:`operators.metrics.tracking`)."""
    return tracking.id_switches(gts, preds, THINGS)


# ---------------------------------------------------------------- running the tracker
def track_synth_video(cfg, video_index: int, tracker_config: TrackerConfig, make_prediction, flow: str = "gt"):
    """Track one synthetic video. ``make_prediction(frame, rng)`` gives the per-frame input;
    ``flow``: ``"gt"`` (the generator's) or ``"dis"`` (OpenCV DIS, what ``tubeflow track`` uses).
    Returns (all GT frames, all tracked frames)."""
    from operators.synth import generate_video

    rng = np.random.default_rng(1000 + video_index)
    tracker = make_tracker(f"{video_index:04d}", tracker_config)   # the tracker the config's method names
    dis = DisFlow("medium") if flow == "dis" else None  # None: the frames carry the generator's flow
    gts = []

    def frames():
        for f in generate_video(cfg, video_index):
            gts.append(f.panoptic)
            yield TrackerFrame(f.frame_index, make_prediction(f.panoptic, rng), f.rgb, f.flow if f.frame_index else None)

    outs = [tracked for _, tracked in track_frames(tracker, frames(), dis)]
    return gts, outs


def scrambled(frame, rng):
    from operators.synth.perturb import scramble_ids

    return scramble_ids(frame, rng)


def noisy(frame, rng):
    from operators.synth.perturb import perturb_frame

    return perturb_frame(frame, rng, THINGS)


def evaluate(cfg, tracker_config, make_prediction, flow="gt") -> dict:
    videos, switches, tracks = [], 0, 0
    for v in range(cfg.videos):
        gts, outs = track_synth_video(cfg, v, tracker_config, make_prediction, flow)
        annotated = [i for i in range(len(gts)) if i % cfg.annotate_every == 0]
        videos.append(([gts[i] for i in annotated], [outs[i] for i in annotated]))
        s, n = id_switches(gts, outs)
        switches, tracks = switches + s, tracks + n
    result = vpq(videos, cfg.annotate_every)
    result["idsw_per_100"] = 100.0 * switches / max(tracks, 1)
    return result


# ---------------------------------------------------------------- tests
def test_id_switches_hand_case():
    """One car whose predicted id changes once, a person missed in between (no switch)."""
    ids = np.zeros((4, 6), np.int32)
    ids[:, :2], ids[:, 2:4], ids[:, 4:] = 14001, 12001, 1
    gt = PanopticFrame(ids, [SegmentInfo(14001, 13), SegmentInfo(12001, 11), SegmentInfo(1, 0)])

    def pred(car, person):
        out = np.select([ids == 14001, ids == 12001], [car, person], 1).astype(np.int32)
        segs = [SegmentInfo(car, 13), SegmentInfo(1, 0)] + ([SegmentInfo(person, 11)] if person else [])
        return PanopticFrame(out, segs)

    assert id_switches([gt] * 3, [pred(5, 7), pred(6, 0), pred(6, 7)]) == (1, 2)
    assert id_switches([gt] * 3, [pred(5, 7), pred(5, 8), pred(6, 7)]) == (3, 2)  # car 5→6, person 7→8→7


def test_scrambled_synthetic_gt_recovers_identities():
    from operators.synth import SynthConfig

    cfg = SynthConfig(videos=1, frames=12, height=96, width=192, seed=3, annotate_every=5)
    gts, outs = track_synth_video(cfg, 0, TrackerConfig(), scrambled)
    switches, tracks = id_switches(gts, outs)
    assert tracks > 0 and switches == 0
    assert vpq([(gts[::5], outs[::5])])["vpq_th"] > 95.0


QUALITY_CORPUS = dict(videos=4, frames=31, height=128, width=256, seed=7, annotate_every=5)


@pytest.mark.slow
@pytest.mark.parametrize("tracker_config", [TrackerConfig(), HYBRID], ids=["default", "hybrid"])
def test_scrambled_gt_quality_targets(tracker_config):
    from operators.synth import SynthConfig

    assert TrackerConfig().method == "composite"
    result = evaluate(SynthConfig(**QUALITY_CORPUS), tracker_config, scrambled)
    assert result["vpq"] >= 97.0 and result[15][1] >= 95.0, result


@pytest.mark.slow
def test_hybrid_with_memory_and_the_default_beat_single_trackers_under_occlusion():
    from operators.synth import SynthConfig

    cfg = SynthConfig(**dict(QUALITY_CORPUS, scenario="occlusion"))
    th15 = {name: evaluate(cfg, c, noisy)[15][1] for name, c in ABLATION.items()}
    singles = max(th15["pixel only"], th15["instance only"])
    assert th15["hybrid + memory"] > singles and th15["composite (default)"] > singles, th15


def print_table(scenarios=("default", "occlusion", "similar", "small", "deform"), flow="gt", method=None) -> None:
    """The README's table; ``method``: every row's tracker method instead of the row's own."""
    from dataclasses import replace

    from operators.synth import SynthConfig

    print(f"corpus: {QUALITY_CORPUS}, flow: {flow}, method: {method or 'each row its own'}")
    print("| input | scenario | tracker | VPQ | VPQ-Th | VPQ-St | VPQ-Th k=15 | ID sw. / 100 tracks |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for scenario in scenarios:
        cfg = SynthConfig(**dict(QUALITY_CORPUS, scenario=scenario))
        rows = [("scrambled GT", "hybrid + memory", HYBRID, scrambled),
                ("scrambled GT", "composite (default)", TrackerConfig(), scrambled)]
        rows += [("noisy", name, c, noisy) for name, c in ABLATION.items()]
        for label, name, tracker_config, maker in rows:
            r = evaluate(cfg, replace(tracker_config, method=method) if method else tracker_config, maker, flow)
            print(f"| {label} | {scenario} | {name} | {r['vpq']:.1f} | {r['vpq_th']:.1f} | {r['vpq_st']:.1f} | "
                  f"{r[15][1]:.1f} | {r['idsw_per_100']:.1f} |", flush=True)


if __name__ == "__main__":  # [scenarios [flow [method]]], e.g. default,occlusion gt composite
    print_table(*([sys.argv[1].split(",")] if len(sys.argv) > 1 else []),
                **({"flow": sys.argv[2]} if len(sys.argv) > 2 else {}),
                **({"method": sys.argv[3]} if len(sys.argv) > 3 else {}))
