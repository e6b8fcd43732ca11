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

A second test measures finalize with ``--overlay`` (no GT) both ways:

* **before** (baseline, a transcription of the replaced ``finalize._write_overlay`` and
  ``pipelines.review.write_thumbnail``): decode the source video again, render every frame with
  the legend of the video's classes, encode an mp4v ``overlays/<video>.mp4``; decode the middle
  frame again for the thumbnail;
* **after**: the sink renders each frame it writes from the pixels it already has and stages it
  as a JPEG (its added time is printed: the work moved into the stream, not gone); finalize puts
  the JPEG bytes into ``overlays/<video>.avi`` (``MjpegAviWriter``), decoding nothing.

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
    by_frame = finalize._staged_frames(staging)
    scratch = fs.join(staging, "..", "..", "scratch", task.video_id)
    frames = []
    for gt in gt.frames:
        rows = by_frame.get(gt.image.frame_index, [])
        pred = segments_table.rows_to_frame(rows, size) if rows or size else PanopticFrame(np.zeros((1, 1), np.int32))
        pred_uri = fs.join(scratch, "pan_pred", png_name(gt.image.id))
        write_panoptic_png(pred_uri, pred.ids)
        frames.append(FrameInputs(gt.image, gt.png_uri, gt.segments, pred_uri, pred.segments))
    return evaluate_video(VideoInputs(task.video_id, frames, "label pipeline"), settings)


def _stage(out, run_id, predictions, records, settings, rgb=None, times=None, render="") -> float:
    start = time.process_time()
    for first in range(0, FRAMES, CHUNK):
        frames = [TrackedFrame("0000", i, FrameLabel(f"0000_{i:04d}", times[i] if times else None, records.get(i),
                                                     rgb[i] if render else None), predictions[i])
                  for i in range(first, min(FRAMES, first + CHUNK))]
        row = _tracked_row({"video_id": "0000", "uri": "", "frame_count": FRAMES}, frames, render=render)
        write_frames(batch_of([row]), out, run_id, write_png=False, categories=CITYSCAPES_CATEGORIES,
                     settings=settings, render=render)
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


def _old_overlay_and_thumbnail(video_uri: str, out: str, by_frame: dict, times: dict,
                               categories=CITYSCAPES_CATEGORIES) -> None:
    """The replaced overlay and thumbnail of finalize (before 2026-12-05), transcribed: the
    source decoded again, the legend of the whole video's classes, an mp4v file; the middle
    frame decoded again for the thumbnail."""
    import cv2

    from operators.review.overlay import legend_classes, render_overlay
    from operators.video import VideoWriter, open_video
    from pipelines.review import frame_ids, labelled_segments

    legend = legend_classes([s for rows in by_frame.values() for s in labelled_segments(rows)], categories)
    with open_video(video_uri) as source, VideoWriter(fs.join(out, "overlays", "0000.mp4"),
                                                     fps=source.meta.fps or 10.0) as writer:
        for index, (rgb, timestamp) in enumerate(source.iter_timed()):
            rows = by_frame.get(index, [])
            writer.write(render_overlay(rgb, frame_ids(rows, rgb.shape[:2]), labelled_segments(rows),
                                        timestamp_ns=times.get(index, timestamp), legend=legend,
                                        categories=categories))
    index = FRAMES // 2
    with open_video(video_uri) as source:
        rgb = source.read(index, index + 1)[0]
    rows = by_frame.get(index, [])
    segments = labelled_segments(rows)
    image = render_overlay(rgb, frame_ids(rows, rgb.shape[:2]), segments, timestamp_ns=times.get(index),
                           legend=legend_classes(segments, categories), categories=categories)
    small = cv2.resize(image, (320, max(1, round(image.shape[0] * 320 / image.shape[1]))), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    fs.write_bytes(fs.join(out, "thumbnails", "0000.jpg"), jpeg.tobytes())


@pytest.mark.parametrize("height,width", [(1024, 2048), (256, 512)])
def test_finalize_overlay_from_staged_jpegs_vs_decoding_again(tmp_path, height, width):
    import os

    from operators.video import open_video
    from pipelines.label.finalize import overlay_rel

    cfg = SynthConfig(videos=1, frames=FRAMES, height=height, width=width, seed=5)
    write_corpus(str(tmp_path / "corpus"), cfg)
    video_uri = str(tmp_path / "corpus" / "videos" / "0000.mp4")
    with open_video(video_uri) as source:  # the frames the pipeline decoded, with their times
        rgb, stamps = source.read_timed(0, FRAMES)
    rng = np.random.default_rng(0)
    predictions = [scramble_ids(f.panoptic, rng) for f in generate_video(cfg, 0)]
    task = VideoTask("0000", video_uri, "fp", FRAMES, "{video_id}_{frame_index:04d}")
    times = {"before": [], "after": [], "sink_old": [], "sink_new": []}
    wall = {"before": [], "after": []}
    sizes = {}
    for repeat in range(REPEATS):
        for way in ("before", "after"):
            out, run_id = str(tmp_path / f"ov_{way}_{repeat}"), "run"
            render = "overlay" if way == "after" else ""
            times["sink_new" if render else "sink_old"].append(
                _stage(out, run_id, predictions, {}, None, rgb, stamps, render))
            staging = OutputLayout(out).staging(run_id, "0000")
            by_frame = finalize._staged_frames(staging)  # finalize has them loaded anyway
            frame_times = dict(enumerate(stamps))
            with Lease(out, run_id):
                start, clock = time.process_time(), time.perf_counter()
                if way == "before":
                    result = finalize_video(out, run_id, task, "h", {}, None, write_overlay=False)
                    _old_overlay_and_thumbnail(video_uri, str(tmp_path / f"old_{repeat}"), by_frame, frame_times)
                else:
                    result = finalize_video(out, run_id, task, "h", {}, None, write_overlay=True)
                times[way].append(time.process_time() - start)
                wall[way].append(time.perf_counter() - clock)
            assert result.status == "ok", result.error
        sizes = {"mp4": os.path.getsize(tmp_path / f"old_{repeat}" / "overlays" / "0000.mp4"),
                 "avi": os.path.getsize(fs.join(out, overlay_rel("0000")))}
    with open_video(fs.join(out, overlay_rel("0000"))) as overlay:
        assert overlay.meta.frame_count == FRAMES
    best = {k: min(v) for k, v in times.items()}
    print(f"\nfinalize --overlay per video ({FRAMES} frames, {height}x{width}, CPU s, best of {REPEATS}): "
          f"before {best['before']:.3f} s, after {best['after']:.3f} s: {best['before'] / best['after']:.1f}x "
          f"(wall {min(wall['before']):.3f} vs {min(wall['after']):.3f} s); sink per video {best['sink_old']:.3f} s "
          f"without rendering, {best['sink_new']:.3f} s rendering (+{best['sink_new'] - best['sink_old']:.3f} s); "
          f"before+sink {best['before'] + best['sink_old']:.3f} s vs after+sink {best['after'] + best['sink_new']:.3f} s "
          f"({(best['before'] + best['sink_old']) / (best['after'] + best['sink_new']):.2f}x); "
          f"file {sizes['mp4'] / 1e6:.2f} MB mp4v vs {sizes['avi'] / 1e6:.2f} MB MJPEG ({sizes['avi'] / sizes['mp4']:.1f}x)")


def test_render_overlay_frame_vs_sorting_ids_and_float_blend():
    """Rendering one 1024x2048 overlay frame: ``render_overlay`` (colours from a lookup table by
    id, the 0.5 blend in integers) vs the same frame the way it was rendered before (every id
    sorted by ``np.unique``, the blend in float32), which the new one equals exactly."""
    from operators.review import overlay
    from operators.review.overlay import LabelledSegment, render_frame_overlay, track_colour

    cfg = SynthConfig(videos=1, frames=2, height=1024, width=2048, seed=5)
    frame = list(generate_video(cfg, 0))[1]
    rgb, ids = frame.rgb, frame.panoptic.ids
    segments = [LabelledSegment(s.id, s.category_id, s.bbox, s.category_id >= 11, bool(s.iscrowd))
                for s in frame.panoptic.segments]

    def sorted_colours(ids, categories=CITYSCAPES_CATEGORIES):
        present, inverse = np.unique(ids, return_inverse=True)
        stuff = overlay._stuff_of(categories)
        palette = np.array([track_colour(int(i), stuff) if i else (0, 0, 0) for i in present],
                           np.uint8).reshape(-1, 3)
        return palette[inverse.reshape(ids.shape)]

    real_render = overlay.render_overlay

    def old_render(*args, **kwargs):  # the float blend (any alpha but 0.5 takes it) and sorted colours
        return real_render(*args, alpha=0.5000001, **kwargs)

    times = {"before": [], "after": []}
    for _ in range(REPEATS):
        start = time.process_time()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(overlay, "colourise", sorted_colours)
            patch.setattr(overlay, "render_overlay", old_render)
            before = render_frame_overlay(rgb, ids, segments, timestamp_ns=10 ** 18)
        times["before"].append(time.process_time() - start)
        start = time.process_time()
        after = render_frame_overlay(rgb, ids, segments, timestamp_ns=10 ** 18)
        times["after"].append(time.process_time() - start)
    assert np.abs(before.astype(np.int16) - after).max() <= 1  # alpha 0.5000001 vs 0.5: rounding at most
    best = {k: min(v) for k, v in times.items()}
    print(f"\nrender one overlay frame (1024x2048, CPU s, best of {REPEATS}): before {best['before']:.3f} s, "
          f"after {best['after']:.3f} s: {best['before'] / best['after']:.1f}x")
