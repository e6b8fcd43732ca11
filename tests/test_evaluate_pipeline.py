"""`tubeflow evaluate` end to end on a local Ray: a small corpus written in the benchmark
layout (GT vs a perturbed copy), the outputs, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from metrics_cases import random_video
from operators.formats.categories import CITYSCAPES_CATEGORIES, categories_by_id
from operators.formats.panoptic import PanopticFrame
from operators.formats.vps_layout import PredictionWriter, VpsImage, write_ground_truth
from operators.metrics.reference import ReferenceFrame, reference_vpq, reference_vpq_sums
from operators.metrics.stq import STQuality
from operators.metrics.contingency import frame_table

CATEGORIES = categories_by_id(CITYSCAPES_CATEGORIES)


def write_corpus(root, videos, *, skip=(), resize=(), bad_category=(), spacing=5):
    """Write GT and predictions of ``videos`` ({video_id: [ReferenceFrame]}) under ``root``.
    ``skip``: (video, frame) without prediction; ``resize``: predictions one column too wide;
    ``bad_category``: prediction segments of an unknown category; ``spacing``: frames between
    two annotated frames (their ``frame_index``)."""
    gt_frames = []
    with PredictionWriter(str(root / "pred")) as writer:
        for video_id, frames in videos.items():
            for n, f in enumerate(frames):
                image = VpsImage(f"{video_id}_{n:04d}_x", f"{video_id}_{n:04d}_x.png", f.gt_ids.shape[1],
                                 f.gt_ids.shape[0], video_id, spacing * n)
                gt_frames.append((image, PanopticFrame(f.gt_ids, list(f.gt_segments))))
                if (video_id, n) in skip:
                    continue
                pred, segs = f.pred_ids, list(f.pred_segments)
                if (video_id, n) in resize:
                    pred = np.pad(pred, ((0, 0), (0, 1)))
                if (video_id, n) in bad_category:
                    segs = [type(s)(s.id, 99, s.area, s.bbox, s.iscrowd) for s in segs]
                writer.add(image.id, PanopticFrame(pred, segs))
    write_ground_truth(str(root / "gt.json"), str(root / "gt"), gt_frames, CITYSCAPES_CATEGORIES)
    return dict(gt_json=str(root / "gt.json"), gt_dir=str(root / "gt"), pred_dir=str(root / "pred"))


def corpus(seed, n_videos=3, frames=5):
    rng = np.random.default_rng(seed)
    return {f"{v:04d}": random_video(rng, frames, height=12, width=16) for v in range(n_videos)}


def expected_metrics(videos):
    sums = reference_vpq_sums(list(videos.values()))
    ref = reference_vpq(sums, {c.id: c.isthing for c in CITYSCAPES_CATEGORIES})
    stq = STQuality(19, [c.id for c in CITYSCAPES_CATEGORIES if c.isthing])
    for video_id, frames in videos.items():
        for f in frames:
            stq.update_from_table(frame_table(0, f.gt_ids, f.gt_segments, f.pred_ids, f.pred_segments), video_id)
    return ref, stq.result()


def test_pipeline_equals_the_reference_and_writes_every_output(tmp_path, ray_local):
    from pipelines.evaluate import evaluate

    videos = corpus(1)
    paths = {name: f"file://{path}" for name, path in write_corpus(tmp_path, videos).items()}  # any fsspec URI
    out = tmp_path / "out"
    report = evaluate(**paths, out=f"file://{out}", progress=False, videos_per_task=2)
    assert not report.failures and not report.warnings
    ref, stq = expected_metrics(videos)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["vpq"] == pytest.approx(ref["all"], abs=1e-9)
    assert metrics["vpq_thing"] == pytest.approx(ref["things"], abs=1e-9)
    assert metrics["vpq_stuff"] == pytest.approx(ref["stuff"], abs=1e-9)
    assert metrics["pq"] == pytest.approx(ref["all_0"], abs=1e-9)
    for k in (0, 5, 10, 15):
        assert metrics["per_k"][str(k)]["vpq"] == pytest.approx(ref[f"all_{k}"], abs=1e-9)
    assert metrics["stq"] == pytest.approx(stq["STQ"], abs=1e-12)
    assert metrics["aq"] == pytest.approx(stq["AQ"], abs=1e-12)
    per_video = pq.read_table(out / "per_video.parquet").to_pylist()
    assert [r["video_id"] for r in per_video] == sorted(videos) and all(r["status"] == "ok" for r in per_video)
    per_class = pq.read_table(out / "per_class.parquet")
    assert per_class.num_rows == 4 * len(CITYSCAPES_CATEGORIES)
    html = (out / "report.html").read_text()
    assert "VPQ-Th" in html and html.count("<svg ") == 2


def test_bad_videos_are_listed_and_the_others_scored(tmp_path, ray_local):
    from jobs.cli import main

    videos = corpus(2, n_videos=5, frames=3)
    paths = write_corpus(tmp_path, videos, skip={("0000", 1)}, resize={("0001", 2)}, bad_category={("0002", 0)})
    (tmp_path / "pred" / "pan_pred" / "0004_0001_x.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["evaluate", "--gt-json", paths["gt_json"], "--gt-dir", paths["gt_dir"], "--pred-dir",
                 paths["pred_dir"], "--out", str(out), "--no-progress"])
    assert code == 1
    metrics = json.loads((out / "metrics.json").read_text())
    errors = {f["video_id"]: f["error"] for f in metrics["failures"]}
    assert set(errors) == {"0000", "0001", "0002", "0004"}
    assert errors["0000"].startswith("video 0000 frame 5") and "no prediction" in errors["0000"]
    assert errors["0001"].startswith("video 0001 frame 10") and "differs" in errors["0001"]
    assert "unknown category ids [99]" in errors["0002"] and "0002_0000_x.png" in errors["0002"]
    assert errors["0004"].startswith("video 0004 frame 5") and "cannot decode PNG" in errors["0004"]
    ref, _ = expected_metrics({"0003": videos["0003"]})
    assert metrics["vpq"] == pytest.approx(ref["all"], abs=1e-9)
    per_video = {r["video_id"]: r for r in pq.read_table(out / "per_video.parquet").to_pylist()}
    assert per_video["0000"]["status"] == "failed" and per_video["0003"]["status"] == "ok"


def test_allow_missing_scores_a_missing_frame_as_all_false_negatives(tmp_path, ray_local):
    from pipelines.evaluate import evaluate

    videos = corpus(3, n_videos=2, frames=4)
    paths = write_corpus(tmp_path, videos, skip={("0001", 2)})
    report = evaluate(**paths, out=str(tmp_path / "out"), allow_missing=True, progress=False)
    assert not report.failures
    empty = dict(videos)
    f = videos["0001"][2]
    empty["0001"] = list(videos["0001"])
    empty["0001"][2] = ReferenceFrame(f.gt_ids, f.gt_segments, np.zeros_like(f.pred_ids), [])
    ref, _ = expected_metrics(empty)
    assert report.vpq.vpq == pytest.approx(ref["all"], abs=1e-9)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["frames_missing_prediction"] == 1


def test_inputs_and_outputs_on_s3(tmp_path, s3_bucket):
    """The per-video operator and the report read and write object storage (moto S3)."""
    import fsspec

    from operators.formats.vps_layout import read_ground_truth, read_predictions
    from operators.metrics.report import build_report, write_report
    from operators.metrics.video import EvaluationSettings, evaluate_videos, plan_videos
    from pipelines.evaluate import Totals

    videos = corpus(4, n_videos=2, frames=3)
    write_corpus(tmp_path, videos)
    fsspec.filesystem("s3").put(str(tmp_path) + "/", f"{s3_bucket}/data/", recursive=True)
    gt = read_ground_truth(f"{s3_bucket}/data/gt.json", f"{s3_bucket}/data/gt")
    settings = EvaluationSettings(gt.categories)
    results = evaluate_videos(plan_videos(gt, read_predictions(f"{s3_bucket}/data/pred")), settings)
    assert [r.error for r in results] == [None, None]
    totals = Totals.of(results)
    write_report(f"{s3_bucket}/out", build_report(settings, totals.vpq, totals.stq, results))
    metrics = json.loads(fsspec.open(f"{s3_bucket}/out/metrics.json").open().read())
    ref, _ = expected_metrics(videos)
    assert metrics["vpq"] == pytest.approx(ref["all"], abs=1e-9)


def test_an_unreadable_file_fails_its_video_only(tmp_path):
    """A path that exists but cannot be read (here a directory where a prediction PNG
    should be) is that video's error naming the file, not an exception that would fail
    the Ray task holding the other videos."""
    from operators.formats.vps_layout import read_ground_truth, read_predictions
    from operators.metrics.video import EvaluationSettings, evaluate_videos, plan_videos

    paths = write_corpus(tmp_path, corpus(5, n_videos=2, frames=2))
    bad = tmp_path / "pred" / "pan_pred" / "0000_0001_x.png"
    bad.unlink()
    bad.mkdir()
    gt = read_ground_truth(paths["gt_json"], paths["gt_dir"])
    results = evaluate_videos(plan_videos(gt, read_predictions(paths["pred_dir"])), EvaluationSettings(gt.categories))
    assert results[0].error.startswith("video 0000 frame 5") and str(bad) in results[0].error
    assert results[1].error is None


def test_report_charts_draw_each_value_at_its_height():
    """The charts are SVG written by hand: every present value is one bar / marker whose
    height is its percentage of the 0-100 axis, a missing value draws nothing, and class
    names are escaped (the SVG parses as XML)."""
    import xml.etree.ElementTree as ET

    from operators.metrics.charts import grouped_bars, line_chart

    svg = "{http://www.w3.org/2000/svg}"
    bars = ET.fromstring(grouped_bars(["car", "<truck & bus>", "rider"],
                                      {"k=0": [50.0, float("nan"), 100.0], "k=5": [25.0, 0.0, None]},
                                      "VPQ^k (%)", "per class"))
    frame = next(r for r in bars.iter(f"{svg}rect") if r.get("fill") == "none")
    plot_top, plot_height = float(frame.get("y")), float(frame.get("height"))
    drawn = [r for r in bars.iter(f"{svg}rect") if r.get("fill") != "none" and float(r.get("y")) >= plot_top]
    heights = sorted(round(float(r.get("height")) / plot_height * 100, 1) for r in drawn)
    assert heights == [0.0, 25.0, 50.0, 100.0]
    assert "<truck & bus>" in [t.text for t in bars.iter(f"{svg}text")]

    line = ET.fromstring(line_chart([0, 5, 10], {"VPQ": [80.0, 60.0, 40.0], "VPQ-St": [None, 20.0, float("nan")]},
                                    "k", "VPQ^k (%)", "VPQ versus k"))
    frame = next(r for r in line.iter(f"{svg}rect") if r.get("fill") == "none")
    plot_top, plot_height = float(frame.get("y")), float(frame.get("height"))
    markers = [round((plot_top + plot_height - float(c.get("cy"))) / plot_height * 100, 1) for c in line.iter(f"{svg}circle")]
    assert markers == [80.0, 60.0, 40.0, 20.0]
    assert len(list(line.iter(f"{svg}polyline"))) == 1   # one point is no line


@pytest.mark.parametrize("videos_per_task", [0, -2])
def test_videos_per_task_below_one_is_refused(tmp_path, videos_per_task):
    """Shards of 0 videos used to drop every video silently (metrics of nothing, exit 0)."""
    from jobs.cli import main
    from operators.errors import InputError
    from pipelines.evaluate import evaluate

    paths = write_corpus(tmp_path, corpus(6, n_videos=1, frames=1))
    with pytest.raises(InputError, match="videos per task"):
        evaluate(**paths, out=str(tmp_path / "out"), videos_per_task=videos_per_task, progress=False)
    assert main(["evaluate", "--gt-json", paths["gt_json"], "--gt-dir", paths["gt_dir"], "--pred-dir",
                 paths["pred_dir"], "--out", str(tmp_path / "out"), "--videos-per-task", str(videos_per_task),
                 "--no-progress"]) != 0
    assert not (tmp_path / "out").exists()


def test_a_negative_stq_ignore_label_is_refused_up_front(tmp_path, capsys):
    """A negative ignore label is no deeplab2 label: every video's STQ raised a ValueError
    inside its Ray task, failing the whole evaluation with a traceback."""
    from jobs.cli import main

    paths = write_corpus(tmp_path, corpus(7, n_videos=1, frames=1))
    code = main(["evaluate", "--gt-json", paths["gt_json"], "--gt-dir", paths["gt_dir"], "--pred-dir",
                 paths["pred_dir"], "--out", str(tmp_path / "out"), "--stq-ignore-label", "-1", "--no-progress"])
    assert code != 0 and "--stq-ignore-label" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ignore_label"):
        STQuality(19, [11], ignore_label=-1)


def test_annotations_not_stride_frames_apart_are_warned_about(tmp_path, ray_local, capsys):
    """VPQ windows count annotated frames: GT annotating every frame, evaluated with --stride 5,
    would report 4-frame windows as k = 20 — the run says so instead of staying silent."""
    from jobs.cli import main

    paths = write_corpus(tmp_path, corpus(3, n_videos=2, frames=4), spacing=1)
    args = ["evaluate", "--gt-json", paths["gt_json"], "--gt-dir", paths["gt_dir"], "--pred-dir", paths["pred_dir"],
            "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "out5")]) == 0  # a warning, not a failure
    warning = json.loads((tmp_path / "out5" / "metrics.json").read_text())["warnings"]
    assert len(warning) == 1 and "not --stride 5 frames apart in 2 of 2 videos" in warning[0]
    assert "0000 (1)" in warning[0] and "warning: annotated frames" in capsys.readouterr().err
    assert "<strong>Warning:</strong> annotated frames" in (tmp_path / "out5" / "report.html").read_text()
    assert main(args + ["--out", str(tmp_path / "out1"), "--stride", "1", "--ks", "0,1,2,3"]) == 0
    assert json.loads((tmp_path / "out1" / "metrics.json").read_text())["warnings"] == []


class _KillsItsWorker:
    """Unpickling this in a Ray worker ends the worker process, as an OOM kill would."""

    def __reduce__(self):
        import os

        return os._exit, (3,)


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_a_dead_evaluation_task_fails_its_videos_and_the_others_are_summed(tmp_path, executor, request):
    """A worker that dies (killed for memory: here it exits while unpickling its shard) fails
    the videos of its shard, on Ray (after Ray's retries) and in the local process pool (a new
    pool takes the remaining shards); the others are scored and summed."""
    from operators.formats.vps_layout import read_ground_truth, read_predictions
    from operators.metrics.report import VideoLog
    from operators.metrics.video import EvaluationSettings, VideoInputs, plan_videos
    from pipelines.evaluate import Shard, TotalsSum, run_shards

    if executor == "ray":
        request.getfixturevalue("ray_local")
    videos = corpus(4, n_videos=3, frames=3)
    paths = write_corpus(tmp_path, videos)
    plans = plan_videos(read_ground_truth(paths["gt_json"], paths["gt_dir"]), read_predictions(paths["pred_dir"]))
    doomed = VideoInputs(plans[1].video_id, plans[1].frames, _KillsItsWorker())
    settings = EvaluationSettings(CATEGORIES, (0, 5, 10, 15), 5)
    log, totals = VideoLog(settings.ks), TotalsSum()
    shards = [Shard(0, [plans[0]]), Shard(1, [doomed]), Shard(2, [plans[2]])]
    for result in run_shards(shards, settings, executor, workers=2):
        totals.add(result)
        for row in result.rows:
            log.add(row)
    errors = {f.video_id: f.error for f in log.failures}
    crash = "WorkerCrashedError" if executor == "ray" else "BrokenProcessPool"
    assert list(errors) == ["0001"] and f"its evaluation task failed ({crash}" in errors["0001"]
    assert log.videos == 3
    survivors = {v: videos[v] for v in ("0000", "0002")}
    ref, stq = expected_metrics(survivors)
    from operators.metrics.report import build_report

    total = totals.result()
    report = build_report(settings, total.vpq, total.stq, log)
    assert report.vpq.vpq == pytest.approx(ref["all"], abs=1e-9)
    assert report.stq["STQ"] == pytest.approx(stq["STQ"], abs=1e-12)
