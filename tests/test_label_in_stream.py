"""Evaluation in the stream, without Ray: the sink scores each annotated frame against its GT
(which it reads itself) where the predicted ids already are, and finalize adds up the staged
tables; no prediction PNG is written or read for it, and the sums are those of
``tubeflow evaluate``'s per-video function on PNGs of the same predictions, to the last bit."""
from __future__ import annotations

import numpy as np
import pytest

from operators import fs
from operators.association.video_operator import TrackedFrame
from operators.formats.categories import CITYSCAPES_CATEGORIES
from operators.formats.panoptic import write_panoptic_png
from operators.formats.vps_layout import read_ground_truth
from operators.metrics.contingency import frame_tables_from_arrow, frame_tables_to_arrow
from operators.metrics.video import EvaluationSettings, FrameInputs, VideoInputs, evaluate_video
from operators.synth import SynthConfig, generate_video, write_corpus
from operators.synth.perturb import scramble_ids
from pipelines.commit import OutputLayout
from pipelines.label.faults import VideoProgress, prepare_retry
from pipelines.label.finalize import VideoTask, finalize_video, metrics_rel, read_video_metrics
from pipelines.label.sink import FRAME_TABLES_DIR, read_frame_tables, write_frames
from pipelines.label.columns import GtFrame
from pipelines.label.ground_truth import GtRef
from pipelines.label.stages import FrameLabel, _tracked_row, batch_of, rows_of
from pipelines.lease import Lease

VIDEO = "0000"
FRAMES = 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """One synthetic video (GT every 5th frame) and per-frame predictions: its GT with scrambled ids."""
    root = tmp_path_factory.mktemp("instream")
    cfg = SynthConfig(videos=1, frames=FRAMES, height=64, width=128, seed=3, annotate_every=5)
    write_corpus(str(root), cfg)
    rng = np.random.default_rng(0)
    predictions = [scramble_ids(frame.panoptic, rng) for frame in generate_video(cfg, 0)]
    gt = read_ground_truth(str(root / "gt" / "panoptic_gt.json"), str(root / "gt" / "panoptic"))
    gt_frames = [GtFrame(image, gt.png_uri(image), gt.annotations[image.key].segments)
                 for image in gt.videos()[VIDEO] if image.key in gt.annotations]
    assert [g.image.frame_index for g in gt_frames] == [0, 5]
    settings = EvaluationSettings(gt.categories, (0, 5), 5)
    ref = GtRef(VIDEO, doc=str(root / "gt" / "panoptic_gt.json"), png_dir=str(root / "gt" / "panoptic"))
    return {"root": root, "predictions": predictions, "gt_frames": gt_frames, "settings": settings, "ref": ref}


def _stage(out: str, run_id: str, corpus, chunks: list[range], settings) -> list[dict]:
    """The sink's writes of ``chunks`` of the video, as the associate stage hands them over;
    returns its summary rows."""
    records = {g.image.frame_index: g for g in corpus["gt_frames"]}
    summaries = []
    for chunk in chunks:
        frames = [TrackedFrame(VIDEO, i, FrameLabel(f"{VIDEO}_{i:04d}", 1000 + i, records.get(i)),
                               corpus["predictions"][i]) for i in chunk]
        row = _tracked_row({"video_id": VIDEO, "uri": f"{out}/in/{VIDEO}.mp4", "frame_count": FRAMES}, frames)
        summary = write_frames(batch_of([row]), out, run_id, write_png=False, categories=CITYSCAPES_CATEGORIES,
                               settings=settings)
        assert summary["error"].tolist() == [""], summary["error"]
        summaries += rows_of(summary)
    return summaries


def _reference(corpus, tmp_path):
    """``tubeflow evaluate``'s per-video function on PNGs of the same predictions."""
    frames = []
    for gt in corpus["gt_frames"]:
        prediction = corpus["predictions"][gt.image.frame_index]
        uri = str(tmp_path / "reference" / f"{gt.image.frame_index}.png")
        write_panoptic_png(uri, prediction.ids)
        frames.append(FrameInputs(gt.image, gt.png_uri, gt.segments, uri, prediction.segments))
    return evaluate_video(VideoInputs(VIDEO, frames), corpus["settings"])


def _spy(monkeypatch) -> dict:
    """Every PNG this process writes or reads through the store, from now on."""
    seen = {"written": [], "read": []}
    write_bytes, read_input, read_bytes = fs.write_bytes, fs.read_input, fs.read_bytes

    def spy_write(uri, data, *args, **kwargs):
        if str(uri).endswith(".png"):
            seen["written"].append(str(uri))
        return write_bytes(uri, data, *args, **kwargs)

    def spy_read(real):
        def read(uri, *args, **kwargs):
            if str(uri).endswith(".png"):
                seen["read"].append(str(uri))
            return real(uri, *args, **kwargs)
        return read

    monkeypatch.setattr(fs, "write_bytes", spy_write)
    monkeypatch.setattr(fs, "read_input", spy_read(read_input))
    monkeypatch.setattr(fs, "read_bytes", spy_read(read_bytes))
    return seen


def _finalize(out: str, run_id: str, corpus):
    task = VideoTask(VIDEO, f"{out}/in/{VIDEO}.mp4", "fingerprint", FRAMES, "{video_id}_{frame_index:04d}",
                     corpus["ref"])
    with Lease(out, run_id):
        return finalize_video(out, run_id, task, "config", {}, corpus["settings"], write_overlay=False)


def test_frame_tables_survive_arrow(corpus):
    from operators.metrics.contingency import decode_ids, frame_table

    tables = []
    for gt in corpus["gt_frames"]:
        prediction = corpus["predictions"][gt.image.frame_index]
        gt_ids = decode_ids(fs.read_input(gt.png_uri), gt.png_uri)
        tables.append(frame_table(gt.image.frame_index, gt_ids, gt.segments, prediction.ids, prediction.segments))
    back = frame_tables_from_arrow(frame_tables_to_arrow(tables))
    for a, b in zip(tables, back):
        assert a.frame_index == b.frame_index
        for side in ("gt", "pred"):
            for name in ("ids", "category", "iscrowd", "json_area", "pixels"):
                np.testing.assert_array_equal(getattr(getattr(a, side), name), getattr(getattr(b, side), name))
        for name in ("pair_gt", "pair_pred", "pair_pixels"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_sink_scores_frames_and_finalize_adds_them_up_without_a_png(corpus, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    expected = _reference(corpus, tmp_path)
    seen = _spy(monkeypatch)
    _stage(out, "run", corpus, [range(0, 4), range(4, 8), range(8, 10)], corpus["settings"])
    staging = OutputLayout(out).staging("run", VIDEO)
    assert sorted(read_frame_tables(staging)) == [0, 5]  # the annotated frames, each scored once
    assert seen["written"] == []
    assert set(seen["read"]) == {g.png_uri for g in corpus["gt_frames"]}  # the GT, by the sink
    seen["read"].clear()
    result = _finalize(out, "run", corpus)
    assert result.status == "ok", result.error
    assert seen == {"written": [], "read": []}  # finalize scores from the staged tables alone
    got = read_video_metrics(fs.join(out, metrics_rel(VIDEO)), VIDEO, 2, corpus["settings"])
    assert got.vpq.table.equals(expected.vpq.table)  # every sum, to the last bit
    assert got.stq.table.equals(expected.stq.table)
    assert 0 < result.metrics["vpq"] <= 1
    assert not fs.exists(fs.join(out, FRAME_TABLES_DIR))  # staging only: not committed


def test_a_missing_gt_png_fails_the_video_in_evaluate_naming_the_file(corpus, tmp_path):
    out = str(tmp_path / "out")
    broken = [*corpus["gt_frames"][:1], GtFrame(corpus["gt_frames"][1].image, str(tmp_path / "gone.png"),
                                                corpus["gt_frames"][1].segments)]
    bad = {**corpus, "gt_frames": broken}
    _stage(out, "run", bad, [range(0, 10)], corpus["settings"])
    result = _finalize(out, "run", bad)
    assert result.status == "failed" and result.stage == "evaluate"
    assert "gone.png" in result.error and f"video {VIDEO} frame 5" in result.error


def test_a_resumed_video_restages_its_tables_and_scores_the_same(corpus, tmp_path):
    """A pass lost the video after the sink wrote frames 0-7 (the report of 4-7 never reached
    the driver); the next resumes at 4: what the lost write staged goes, the rest is kept, and
    the sums equal an uninterrupted run's."""
    out = str(tmp_path / "out")
    layout = OutputLayout(out)
    progress = VideoProgress(VIDEO)
    reported, _lost = _stage(out, "run", corpus, [range(0, 4), range(4, 8)], corpus["settings"])
    progress.add(reported)
    staging = layout.staging("run", VIDEO)
    assert sorted(read_frame_tables(staging)) == [0, 5]
    assert prepare_retry(layout, "run", progress, [4, 8]) == 4
    assert sorted(read_frame_tables(staging)) == [0]  # frame 5's table was written by the lost write
    _stage(out, "run", corpus, [range(4, 10)], corpus["settings"])
    result = _finalize(out, "run", corpus)
    assert result.status == "ok", result.error
    got = read_video_metrics(fs.join(out, metrics_rel(VIDEO)), VIDEO, 2, corpus["settings"])
    expected = _reference(corpus, tmp_path)
    assert got.vpq.table.equals(expected.vpq.table) and got.stq.table.equals(expected.stq.table)


def test_a_write_without_segments_is_not_straddled_by_a_resume_point():
    """Frame times and tables are parts of every sink write, also of one without segments: a
    boundary inside such a write is no resume point (its parts would be half kept)."""
    from pipelines.label.faults import resume_point

    progress = VideoProgress(VIDEO, frame_count=FRAMES)
    progress.add({"frame_count": FRAMES, "frames": np.arange(4), "part": "a.parquet", "frames_failed": 0,
                  "error": "", "frames_done": 4})
    progress.add({"frame_count": FRAMES, "frames": np.arange(4, 9), "part": "", "frames_failed": 0,
                  "error": "", "frames_done": 5})
    assert resume_point(progress, [4, 8]) == 4
