"""The overlay video from frames already decoded, without Ray: the sink renders each frame it
writes (its pixels ride with it from decode) and stages it as a JPEG; finalize puts the JPEGs
one after another into a Motion-JPEG AVI without opening the source video; the staged frames
leave with the commit, a resumed video restages exactly the frames it loses, and the video is
the same however the frames reached the sink."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from operators import fs
from operators.association.video_operator import TrackedFrame
from operators.formats import segments_table
from operators.formats.categories import CITYSCAPES_CATEGORIES
from operators.review.overlay import render_frame_overlay
from operators.synth import SynthConfig, generate_video
from operators.synth.perturb import scramble_ids
from pipelines.commit import OutputLayout
from pipelines.label.association_actor import _without_pixels, answer_for_sender
from pipelines.label.faults import VideoProgress, prepare_retry
from pipelines.label.finalize import VideoTask, finalize_video, frame_rate, overlay_rel
from pipelines.label.sink import OVERLAY_FRAMES_DIR, iter_overlay_frames, segment_labels, write_frames
from pipelines.label.stages import FrameLabel, _tracked_row, batch_of, renders, rows_of
from pipelines.lease import Lease
from pipelines.review import thumbnail_rel

VIDEO = "0000"
FRAMES = 10
PERIOD_NS = 50_000_000  # 20 fps


@pytest.fixture(scope="module")
def corpus():
    cfg = SynthConfig(videos=1, frames=FRAMES, height=64, width=128, seed=5)
    frames = list(generate_video(cfg, 0))
    rng = np.random.default_rng(1)
    return {"rgb": [f.rgb for f in frames], "predictions": [scramble_ids(f.panoptic, rng) for f in frames]}


def _stage(out: str, corpus, writes: list[list[int]], render: str = "overlay", run_id: str = "run",
           pixels_in_label: bool = True) -> list[dict]:
    """One sink write per list of frames (any frames, in any order), as the associate stage hands
    them over: the pixels in each frame's label (a frame of a held chunk), or (``pixels_in_label``
    False) in the row's decoded frames (a frame of the chunk just pushed)."""
    summaries = []
    for frames in writes:
        tracked = [TrackedFrame(VIDEO, i, FrameLabel(f"{VIDEO}_{i:04d}", 10 ** 18 + i * PERIOD_NS, None,
                                                     corpus["rgb"][i] if renders(render, i, FRAMES) else None),
                                corpus["predictions"][i]) for i in frames]
        row = {"video_id": VIDEO, "uri": f"{out}/in/{VIDEO}.mp4", "frame_count": FRAMES}
        if not pixels_in_label:  # one chunk [a, b): the actor sent its frames back without their pixels
            a, b = min(frames), max(frames) + 1
            assert frames == list(range(a, b))
            tracked = [_without_pixels(f) for f in tracked]
            row.update(frame_start=a, frame_end=b, rgb=np.stack(corpus["rgb"][a:b]))
        out_row = _tracked_row(row, tracked, render=render)
        summary = write_frames(batch_of([out_row]), out, run_id, write_png=False, categories=CITYSCAPES_CATEGORIES,
                               render=render)
        assert summary["error"].tolist() == [""], summary["error"]
        summaries += rows_of(summary)
    return summaries


def _finalize(out: str, monkeypatch, overlay: bool = True, review: str | None = None, run_id: str = "run"):
    """Finalize with every way of opening the source video shut: it must not decode it."""
    import pipelines.label.finalize as finalize
    import pipelines.review as review_module

    def no_decoding(uri, *_, **__):
        raise AssertionError(f"finalize opened the source video {uri}")

    monkeypatch.setattr(finalize, "open_video", no_decoding)
    monkeypatch.setattr(review_module, "LogTopicSource", no_decoding, raising=False)
    task = VideoTask(VIDEO, f"{out}/in/{VIDEO}.mp4", "fingerprint", FRAMES, "{video_id}_{frame_index:04d}")
    with Lease(out, run_id):
        return finalize_video(out, run_id, task, "config", {}, None, write_overlay=overlay, review=review)


def _expected(corpus, out: str) -> list[np.ndarray]:
    """Each frame rendered from the source frame and the committed segments table's rows."""
    table = segments_table.read_segments_table(f"{out}/segments")
    by_frame = {i: table.filter(np.asarray(table["frame_index"]) == i) for i in range(FRAMES)}
    return [render_frame_overlay(corpus["rgb"][i], corpus["predictions"][i].ids, segment_labels(by_frame[i]),
                                 timestamp_ns=10 ** 18 + i * PERIOD_NS) for i in range(FRAMES)]


def _read_avi(path: str) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, bgr = cap.read()
        if not ok:
            return frames, fps
        frames.append(bgr[..., ::-1])


def test_the_overlay_is_assembled_from_the_sink_s_frames_without_decoding(corpus, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    _stage(out, corpus, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]])
    staging = OutputLayout(out).staging("run", VIDEO)
    assert [i for i, _ in iter_overlay_frames(staging)] == list(range(FRAMES))
    result = _finalize(out, monkeypatch, overlay=True, review="mcap")
    assert result.status == "ok", result.error
    read, fps = _read_avi(f"{out}/{overlay_rel(VIDEO)}")
    expected = _expected(corpus, out)
    assert len(read) == FRAMES and fps == pytest.approx(20.0)
    assert all(r.shape == expected[0].shape for r in read + expected)  # one size, legend strip below the frame
    assert read[0].shape[0] > 64
    for i, frame in enumerate(read):  # each frame is its own rendering, up to JPEG's losses
        errors = [np.abs(frame.astype(np.int16) - e).mean() for e in expected]
        assert errors[i] < 6.0 and int(np.argmin(errors)) == i, (i, errors)
    thumb = cv2.imdecode(np.frombuffer(open(f"{out}/{thumbnail_rel(VIDEO)}", "rb").read(), np.uint8), cv2.IMREAD_COLOR)
    middle = cv2.resize(expected[FRAMES // 2], (320, thumb.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb[..., ::-1].astype(np.int16) - middle).mean() < 3.0
    assert not fs.exists(f"{out}/{OVERLAY_FRAMES_DIR}") and not fs.exists(staging)  # committed, never an output


def test_the_video_is_the_same_however_the_frames_reached_the_sink(corpus, tmp_path, monkeypatch):
    """Chunks as they come (pixels from the row), frames of held chunks (pixels in the label),
    one write with frames of chunks that are not neighbours: the same bytes."""
    videos = {}
    for name, writes, in_label in (("rows", [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]], False),
                                   ("labels", [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]], True),
                                   ("scattered", [[8, 9, 0, 1, 2, 3], [4, 5, 6, 7]], True)):
        out = str(tmp_path / name)
        _stage(out, corpus, writes, pixels_in_label=in_label)
        assert _finalize(out, monkeypatch).status == "ok"
        videos[name] = open(f"{out}/{overlay_rel(VIDEO)}", "rb").read()
    assert videos["rows"] == videos["labels"] == videos["scattered"]


def test_a_resumed_video_restages_the_overlay_frames_it_lost(corpus, tmp_path, monkeypatch):
    """A pass lost the video after the sink wrote frames 0-7; the next resumes at 4: the frames
    the lost write staged go, the rest stay, and the video equals an uninterrupted run's."""
    whole = str(tmp_path / "whole")
    _stage(whole, corpus, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]])
    assert _finalize(whole, monkeypatch).status == "ok"
    out = str(tmp_path / "out")
    layout = OutputLayout(out)
    progress = VideoProgress(VIDEO)
    reported, _lost = _stage(out, corpus, [[0, 1, 2, 3], [4, 5, 6, 7]])
    progress.add(reported)
    assert prepare_retry(layout, "run", progress, [4, 8]) == 4
    assert [i for i, _ in iter_overlay_frames(layout.staging("run", VIDEO))] == [0, 1, 2, 3]
    _stage(out, corpus, [[4, 5, 6, 7], [8, 9]])
    assert _finalize(out, monkeypatch).status == "ok"
    assert open(f"{out}/{overlay_rel(VIDEO)}", "rb").read() == open(f"{whole}/{overlay_rel(VIDEO)}", "rb").read()


def test_a_frame_missing_from_the_staging_fails_the_video_in_overlay(corpus, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    _stage(out, corpus, [[0, 1, 2, 3], [6, 7, 8, 9]])  # 4 and 5 never staged
    result = _finalize(out, monkeypatch)
    assert result.status == "failed" and result.stage == "overlay"
    assert "overlay frame 4 was not staged" in result.error
    assert not fs.exists(f"{out}/overlays") and not fs.exists(OutputLayout(out).staging("run", VIDEO))


def test_review_without_overlay_renders_the_middle_frame_only(corpus, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    summaries = _stage(out, corpus, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]], render="thumbnail")
    staging = OutputLayout(out).staging("run", VIDEO)
    assert fs.exists(fs.join(staging, thumbnail_rel(VIDEO))) and not list(iter_overlay_frames(staging))
    assert [s["frames"].tolist() for s in summaries] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    result = _finalize(out, monkeypatch, overlay=False, review="mcap")
    assert result.status == "ok", result.error
    assert fs.exists(f"{out}/{thumbnail_rel(VIDEO)}") and not fs.exists(f"{out}/overlays")


def test_only_the_rendered_frames_carry_pixels():
    assert [i for i in range(FRAMES) if renders("thumbnail", i, FRAMES)] == [FRAMES // 2]
    assert [i for i in range(FRAMES) if renders("overlay", i, FRAMES)] == list(range(FRAMES))
    assert not any(renders("", i, FRAMES) for i in range(FRAMES))
    row = {"video_id": VIDEO, "uri": "x", "frame_count": FRAMES}
    assert _tracked_row(row, [])["rgb"].shape[0] == 0


def test_frame_rate_from_the_frames_times():
    assert frame_rate({i: 5 + i * PERIOD_NS for i in range(FRAMES)}, FRAMES) == pytest.approx(20.0)
    assert frame_rate({i: None for i in range(FRAMES)}, FRAMES) == 10.0  # an image directory: no times
    assert frame_rate({0: 7}, 1) == 10.0


def test_the_pixels_a_label_carries_into_the_tracker_are_not_sent_twice(corpus):
    """The tracker's frame and the frame's label share one array: the chunk the feeder puts in
    the object store for the association actor is no larger with the overlay on."""
    import pickle

    from pipelines.label.columns import gt_columns, segment_columns, strings, time_columns
    from pipelines.label.stages import track_chunk

    n = 4
    row = {"video_id": VIDEO, "frame_start": 0, "frame_end": n, "frame_count": FRAMES,
           "image_ids": strings(f"{VIDEO}_{i:04d}" for i in range(n)), **time_columns([None] * n), **gt_columns([]),
           **segment_columns([[]] * n), "panoptic": np.zeros((n, 64, 128), np.int32),
           "embeddings": np.zeros((0, 0), np.float32), "rgb": np.stack(corpus["rgb"][:n]),
           "flow": np.zeros((n, 64, 128, 2), np.float32)}
    plain, rendered = (len(pickle.dumps(track_chunk(row, render), protocol=5)) for render in ("", "overlay"))
    assert all(f.image_id.rgb is not None for f in track_chunk(row, "overlay").frames)
    assert rendered < plain + 2000  # the labels' references, not another n × 64 × 128 × 3 bytes


def test_the_association_actor_sends_back_only_the_pixels_its_caller_lacks(corpus):
    """Frames of the chunk just pushed come back without pixels (the feeder's row has them);
    frames of chunks the actor held come back with theirs."""
    frames = [TrackedFrame(VIDEO, i, FrameLabel(f"{VIDEO}_{i:04d}", None, None, corpus["rgb"][i]),
                           corpus["predictions"][i]) for i in range(8)]
    sent = answer_for_sender(frames, 0, 4)  # chunk 0-3 pushed; 4-7 were held
    assert [f.image_id.rgb is None for f in sent] == [True] * 4 + [False] * 4
    assert [f.image_id.image_id for f in sent] == [f"{VIDEO}_{i:04d}" for i in range(8)]


def test_a_video_without_any_segment_is_finalized_without_opening_it(corpus, tmp_path, monkeypatch):
    """The frames' size comes from the sink's staged frame times, not from the source video."""
    import json

    from operators.formats.panoptic import PanopticFrame

    out = str(tmp_path / "out")
    empty = {"rgb": corpus["rgb"], "predictions": [PanopticFrame(np.zeros((64, 128), np.int32), [])] * FRAMES}
    _stage(out, empty, [list(range(FRAMES))], render="")
    result = _finalize(out, monkeypatch, overlay=False)
    assert result.status == "ok" and result.segments == 0, result
    annotations = json.loads(open(f"{out}/annotations/{VIDEO}.json").read())
    assert {(im["width"], im["height"]) for im in annotations["images"]} == {(128, 64)}
    assert len(annotations["images"]) == FRAMES
