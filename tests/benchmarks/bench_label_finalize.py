"""Finalize time per video with GT: evaluation from the sink's staged contingency tables vs the
PNG round trip it replaced, in the same run, no Ray.

One synthetic video (30 frames, GT every 5th frame: 6 annotated, as a Cityscapes-VPS clip) at
1024×2048 is staged by the sink (``write_frames``, ``--png`` off), then finalized (annotations,
metrics, commit; no overlay) both ways:

* **before** (baseline, a transcription of the replaced ``finalize._evaluate``): rebuild each
  annotated frame's panoptic map from the segments table, write it as a PNG to scratch, and
  ``evaluate_video`` decodes it back with the GT PNG;
* **after** (``finalize._evaluate``): read the staged tables, add them up.

The after-sink also scores the annotated frames (reads the GT PNGs, builds the tables): that is
printed too, as the sink's added time per video, so the move is not hidden.

Run: ``PYTHONPATH=. python -m pytest -m benchmark -s tests/benchmarks/bench_label_finalize.py``
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from operators import fs
from operators.association.video_operator import TrackedFrame
from operators.formats import segments_table
from operators.formats.categories import CITYSCAPES_CATEGORIES
from operators.formats.panoptic import PanopticFrame, write_panoptic_png
from operators.formats.vps_layout import read_ground_truth
from operators.ids import png_name
from operators.metrics.video import EvaluationSettings, FrameInputs, VideoInputs, evaluate_video
from operators.synth import SynthConfig, generate_video, write_corpus
from operators.synth.perturb import scramble_ids
from pipelines.commit import OutputLayout
from pipelines.label import finalize
from pipelines.label.finalize import VideoTask, finalize_video
from pipelines.label.sink import write_frames
from pipelines.label.columns import GtFrame
from pipelines.label.ground_truth import GtRef
from pipelines.label.stages import FrameLabel, _tracked_row, batch_of
from pipelines.lease import Lease

pytestmark = pytest.mark.benchmark
FRAMES, CHUNK, REPEATS = 30, 6, 3


def _old_evaluate(task, gt, staging, size, settings):
    """The replaced evaluation: staged segments → a PNG per annotated frame → evaluate_video."""
    by_frame, _ = finalize._staged_frames(staging, task.frame_count, None)
    scratch = fs.join(staging, "..", "..", "scratch", task.video_id)
    frames = []
    for gt in gt.frames:
        rows = by_frame.get(gt.image.frame_index, [])
        pred = segments_table.rows_to_frame(rows, size) if rows or size else PanopticFrame(np.zeros((1, 1), np.int32))
        pred_uri = fs.join(scratch, "pan_pred", png_name(gt.image.id))
        write_panoptic_png(pred_uri, pred.ids)
        frames.append(FrameInputs(gt.image, gt.png_uri, gt.segments, pred_uri, pred.segments))
    return evaluate_video(VideoInputs(task.video_id, frames, "label pipeline"), settings)


def _stage(out, run_id, predictions, records, settings) -> float:
    start = time.process_time()
    for first in range(0, FRAMES, CHUNK):
        frames = [TrackedFrame("0000", i, FrameLabel(f"0000_{i:04d}", None, records.get(i)), predictions[i])
                  for i in range(first, min(FRAMES, first + CHUNK))]
        row = _tracked_row({"video_id": "0000", "uri": "", "frame_count": FRAMES}, frames)
        write_frames(batch_of([row]), out, run_id, write_png=False, categories=CITYSCAPES_CATEGORIES,
                     settings=settings)
    return time.process_time() - start


def test_finalize_from_staged_tables_vs_png_round_trip(tmp_path, monkeypatch):
    cfg = SynthConfig(videos=1, frames=FRAMES, height=1024, width=2048, seed=5, annotate_every=5)
    write_corpus(str(tmp_path / "corpus"), cfg)
    rng = np.random.default_rng(0)
    predictions = [scramble_ids(f.panoptic, rng) for f in generate_video(cfg, 0)]
    gt = read_ground_truth(str(tmp_path / "corpus/gt/panoptic_gt.json"), str(tmp_path / "corpus/gt/panoptic"))
    gt_frames = [GtFrame(i, gt.png_uri(i), gt.annotations[i.key].segments) for i in gt.videos()["0000"]
                 if i.key in gt.annotations]
    records = {g.image.frame_index: g for g in gt_frames}
    settings = EvaluationSettings(gt.categories)
    task = VideoTask("0000", "", "fp", FRAMES, "{video_id}_{frame_index:04d}",
                     GtRef("0000", doc=str(tmp_path / "corpus/gt/panoptic_gt.json"), png_dir=gt.png_dir))
    new_evaluate = finalize._evaluate
    times = {"before": [], "after": [], "sink_old": [], "sink_new": []}
    results = {}
    for repeat in range(REPEATS):
        for way in ("before", "after"):
            out, run_id = str(tmp_path / f"out_{way}_{repeat}"), "run"
            sink = _stage(out, run_id, predictions, records, settings if way == "after" else None)
            times["sink_new" if way == "after" else "sink_old"].append(sink)
            monkeypatch.setattr(finalize, "_evaluate", new_evaluate if way == "after" else _old_evaluate)
            with Lease(out, run_id):
                start = time.process_time()
                result = finalize_video(out, run_id, task, "h", {}, settings, write_overlay=False)
                times[way].append(time.process_time() - start)
            assert result.status == "ok", result.error
            results[way] = result.metrics
    assert results["before"] == results["after"]  # the same numbers either way
    best = {k: min(v) for k, v in times.items()}
    print(f"\nfinalize per video (30 frames, 6 annotated, 1024x2048, CPU s, best of {REPEATS}): "
          f"before {best['before']:.3f} s, after {best['after']:.3f} s: {best['before'] / best['after']:.1f}x; "
          f"sink per video: {best['sink_old']:.3f} s without GT, {best['sink_new']:.3f} s scoring the frames "
          f"(+{best['sink_new'] - best['sink_old']:.3f} s); before+sink {best['before'] + best['sink_old']:.3f} s "
          f"vs after+sink {best['after'] + best['sink_new']:.3f} s")
