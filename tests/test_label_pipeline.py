"""The labelling pipeline end to end on a small synthetic corpus with bad videos mixed in.

One pipeline run (module fixture) is checked against: the plain sequential loop over the
same operators (identical track ids, so chunking and scheduling change nothing), the
``evaluate`` pipeline run on its submission-layout output (identical metrics), the commit
markers, failure rows for each kind of bad input, the overlay video; then a rerun skips
everything committed and a nightly run after a change reprocesses only the changed video.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from operators.formats import segments_table
from operators.formats.vps_layout import PredictionWriter
from operators.segmentation.precomputed import PrecomputedSegmenter
from operators.synth import SynthConfig, generate_video, write_corpus
from operators.synth.perturb import scramble_ids
from operators.video import open_video
from pipelines.commit import OutputLayout, committed_markers
from pipelines.label import LabelRun, label
from pipelines.label.config import LabelConfig
from pipelines.sequential import label_sequentially

IMAGE_ID = "{video_id}_{frame_index:04d}_synth"
GOOD = ["0000", "0001"]


def make_corpus(root, videos: int = 3, frames: int = 10, height: int = 128, width: int = 256) -> str:
    """A synthetic corpus plus per-frame predictions (GT with scrambled ids) in ``root/perframe``."""
    cfg = SynthConfig(videos=videos, frames=frames, height=height, width=width, seed=0, annotate_every=5)
    write_corpus(str(root), cfg)
    rng = np.random.default_rng(0)
    with PredictionWriter(str(root / "perframe")) as writer:
        for v in range(cfg.videos):
            for frame in generate_video(cfg, v):
                writer.add(frame.image_id, scramble_ids(frame.panoptic, rng))
    return str(root)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, ray_local):
    """One run over two good videos and three bad ones (undecodable, empty, a missing GT PNG), all
    five in one input block: a bad video fails in its own rows, whatever block it shares."""
    from pipelines.label import graph

    root = tmp_path_factory.mktemp("label")
    corpus = make_corpus(root / "corpus")
    videos = root / "corpus" / "videos"
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)  # undecodable
    (videos / "empty.mp4").write_bytes(b"")
    gt_png = root / "corpus" / "gt" / "panoptic" / "0002_0005_synth_gtFine_panoptic.png"
    os.remove(gt_png)  # video 0002: a GT file is missing
    config = LabelConfig(segmenter="precomputed", model=f"{corpus}/perframe", gt_json=f"{corpus}/gt/panoptic_gt.json",
                         image_id_format=IMAGE_ID, chunk_frames=4, write_png=True, write_overlay=True)
    out = str(root / "out")
    blocks = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(graph, "input_blocks", lambda n, slots, isolate=False: blocks.append(n) or 1)
        run = label(str(videos), out, config, progress=False, log=lambda *_: None)
    assert blocks == [5]  # one pass, its five videos in one block
    return {"root": root, "corpus": corpus, "videos": str(videos), "out": out, "config": config, "run": run,
            "missing_gt": str(gt_png)}


def test_good_videos_committed_and_bad_ones_get_failure_rows(labelled):
    run, out = labelled["run"], labelled["out"]
    status = {r.video_id: r.status for r in run.results}
    assert status == {"0000": "ok", "0001": "ok", "0002": "failed", "broken": "failed", "empty": "failed"}
    failures = {row["video_id"]: row for row in pq.read_table(f"{out}/failures.parquet").to_pylist()}
    assert failures["broken"]["stage"] == "plan" and "broken.mp4" in failures["broken"]["error"]
    assert failures["empty"]["stage"] == "plan" and "empty.mp4" in failures["empty"]["error"]
    assert failures["0002"]["stage"] == "evaluate" and labelled["missing_gt"] in failures["0002"]["error"]
    assert sorted(committed_markers(OutputLayout(out))) == GOOD  # nothing of a failed video is committed
    assert not os.path.exists(f"{out}/_staging")
    manifest = json.loads(open(f"{out}/run_manifest.json").read())
    assert manifest["totals"] == {"ok": 2, "skipped": 0, "failed": 3}
    assert manifest["model_checksums"]["segmenter"] and manifest["versions"]["ray"]
    assert manifest["videos"]["0000"]["frames"] == 10


def test_pipeline_equals_the_sequential_loop(labelled, tmp_path):
    """Same operators frame by frame with no chunks and no Ray: the same ids, frame for frame."""
    host = PrecomputedSegmenter(f"{labelled['corpus']}/perframe")
    videos = [(v, f"{labelled['videos']}/{v}.mp4") for v in GOOD]
    reference = label_sequentially(videos, host, image_id=lambda v, i: IMAGE_ID.format(video_id=v, frame_index=i),
                                   segments_out=str(tmp_path / "sequential"))
    table = segments_table.read_segments_table(f"{labelled['out']}/segments")
    assert sorted(set(table["video_id"].to_pylist())) == GOOD
    # the loop's own segments table (what the speed benchmark makes it write) has the same rows
    columns = ["video_id", "frame_index", "image_id", "track_id", "category_id", "area", "bbox", "mask"]
    ours = segments_table.read_segments_table(str(tmp_path / "sequential")).select(columns)
    assert ours.sort_by([("video_id", "ascending"), ("frame_index", "ascending"), ("track_id", "ascending")]).equals(
        table.select(columns).sort_by([("video_id", "ascending"), ("frame_index", "ascending"),
                                       ("track_id", "ascending")]))
    rebuilt = {(f.video_id, f.frame_index): f.frame for f in segments_table.iter_table_frames(table)}
    checked = 0
    for video_id, frames in reference.frames.items():
        for index, expected in enumerate(frames):
            got = rebuilt.get((video_id, index))
            got_ids = got.ids if got is not None else np.zeros_like(expected.ids)
            np.testing.assert_array_equal(got_ids, expected.ids, err_msg=f"video {video_id} frame {index}")
            checked += 1
    assert checked == 20


def _committed_gt(labelled, tmp_path) -> str:
    """The corpus's GT JSON less the videos that failed (what evaluate scores the outputs against)."""
    gt = json.loads(open(f"{labelled['corpus']}/gt/panoptic_gt.json").read())
    keep = {im["id"] for im in gt["images"] if im["video_id"] in GOOD}
    gt = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
          "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return str(tmp_path / "gt.json")


def test_in_pass_metrics_equal_the_evaluate_pipeline(labelled, tmp_path):
    from pipelines.evaluate import evaluate

    corpus, out = labelled["corpus"], labelled["out"]
    assert json.loads(open(f"{out}/pred.json").read())["annotations"]
    # evaluate the submission-layout output against the GT of the committed videos only
    report = evaluate(_committed_gt(labelled, tmp_path), f"{corpus}/gt/panoptic", out, str(tmp_path / "eval"), progress=False)
    in_pass = labelled["run"].report
    assert in_pass is not None and report.vpq.per_class == in_pass.vpq.per_class  # every sum, exactly
    assert report.vpq.vpq == in_pass.vpq.vpq and report.stq == in_pass.stq
    assert 0.5 < in_pass.vpq.vpq <= 1.0
    assert json.loads(open(f"{out}/metrics/metrics.json").read())


def _no_whole_gt_in_this_process(monkeypatch, gt_json: str) -> list[str]:
    """Make every whole-document read of ``gt_json`` in this process (the driver: Ray's workers
    are processes of their own) fail; returns the list of documents read whole here."""
    from operators.formats import vps_layout

    read, load = [], vps_layout.load_json

    def spy(uri, *args, **kwargs):
        read.append(str(uri))
        if str(uri) == gt_json:
            raise AssertionError(f"the driver parsed the whole GT {uri}")
        return load(uri, *args, **kwargs)

    monkeypatch.setattr(vps_layout, "load_json", spy)
    return read


def test_without_png_no_prediction_png_is_written_and_metrics_equal_evaluate_exactly(labelled, tmp_path, monkeypatch):
    """``--png`` off: the sink scores the annotated frames where the predicted ids are, so no
    frame PNG appears anywhere under the output (staging included) while the run goes (a watcher
    lists the tree as it runs; the old evaluation wrote each annotated frame to scratch), and the metrics equal ``tubeflow evaluate`` of the
    run's own segments table to the last count and bit. The driver never parses the GT JSON
    whole: it splits it as a stream, the tasks read each video's own document."""
    import threading

    from pipelines.evaluate import evaluate

    corpus, out = labelled["corpus"], tmp_path / "out"
    whole_reads = _no_whole_gt_in_this_process(monkeypatch, labelled["config"].gt_json)
    seen, stop = set(), threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for folder, _, files in os.walk(out):  # every PNG but the report's plots (metrics/*.png)
                if os.path.relpath(folder, out) != "metrics":
                    seen.update(os.path.join(folder, f) for f in files if f.endswith(".png"))
            stop.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run = label(labelled["videos"], str(out), replace(labelled["config"], write_png=False, write_overlay=False),
                    progress=False, only_videos=GOOD, log=lambda *_: None)
    finally:
        stop.set()
        watcher.join()
    assert {r.status for r in run.results} == {"ok"} and run.report is not None
    assert seen == set()
    # not even one video's document (they are under the output): the plan and finalize tasks read them
    assert [r for r in whole_reads if r.startswith(str(out))] == []
    report = evaluate(_committed_gt(labelled, tmp_path), f"{corpus}/gt/panoptic", out=str(tmp_path / "eval"),
                      pred_table=str(out / "segments"), progress=False)
    assert report.vpq.per_class == run.report.vpq.per_class  # every category's sums at every k, exactly
    assert report.vpq.vpq == run.report.vpq.vpq and report.stq == run.report.stq
    assert 0.5 < run.report.vpq.vpq <= 1.0


def test_a_gt_table_gives_the_metrics_of_evaluate_on_the_table_exactly(labelled, tmp_path, monkeypatch):
    """``--gt`` a segments table (the product's own format, told from a GT JSON by its being a
    directory): each task reads its video's partition, the driver only lists it, and the metrics
    equal ``tubeflow evaluate`` of the run's segments table against the same GT table, per
    category and k, exactly."""
    from operators.formats import convert
    from pipelines.evaluate import evaluate

    corpus, out = labelled["corpus"], tmp_path / "out"
    table = str(tmp_path / "gt_table")
    convert.vps_to_table(_committed_gt(labelled, tmp_path), f"{corpus}/gt/panoptic", table)
    whole_reads = _no_whole_gt_in_this_process(monkeypatch, labelled["config"].gt_json)
    config = replace(labelled["config"], gt_json=table, gt_dir=None, write_png=False, write_overlay=False)
    run = label(labelled["videos"], str(out), config, progress=False, only_videos=GOOD, log=lambda *_: None)
    assert {r.status for r in run.results} == {"ok"} and run.report is not None, run.results
    assert [r for r in whole_reads if r.startswith(str(out))] == []
    report = evaluate(gt_table=table, pred_table=str(out / "segments"), out=str(tmp_path / "eval"), progress=False)
    assert report.vpq.per_class == run.report.vpq.per_class  # every category's sums at every k, exactly
    assert report.vpq.vpq == run.report.vpq.vpq and report.stq == run.report.stq
    assert report.vpq.per_class == labelled["run"].report.vpq.per_class  # the GT JSON's run: the same numbers
    assert 0.5 < run.report.vpq.vpq <= 1.0
    assert not os.path.exists(out / "_staging")


def test_overlay_has_every_frame_with_consistent_colours(labelled):
    """Every frame is there, and inside every track's mask the overlay shows that track's own
    colour (:func:`track_colour` of its id), in every frame it appears in."""
    import cv2

    from operators.review.overlay import track_colour

    uri = f"{labelled['out']}/overlays/0000.avi"
    with open_video(uri) as overlay, open_video(f"{labelled['videos']}/0000.mp4") as source:
        assert overlay.meta.frame_count == source.meta.frame_count == 10
        # the frame, then the legend of its classes below it
        assert overlay.meta.width == source.meta.width and overlay.meta.height > source.meta.height
        shown = [f[:source.meta.height] for f in overlay.read(0, 10)]
        under = list(source.read(0, 10))
    table = segments_table.read_segments_table(f"{labelled['out']}/segments")
    frames = {f.frame_index: f.frame for f in segments_table.iter_table_frames(table) if f.video_id == "0000"}
    checked = 0
    for index, frame in frames.items():
        for segment in frame.segments:
            inside = cv2.erode((frame.ids == segment.id).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
            if inside.sum() < 50:
                continue  # too thin to be away from the drawn edges and the codec's ringing
            painted = 2 * shown[index][inside].astype(np.float64) - under[index][inside]  # alpha 0.5
            assert np.abs(np.median(painted, axis=0) - track_colour(segment.id)).max() < 40, (index, segment.id)
            checked += 1
    assert checked >= 20


def test_rerun_skips_committed_videos(labelled, monkeypatch):
    import cluster.connect

    def no_ray(*_, **__):
        raise AssertionError("a run with nothing to label started Ray")

    monkeypatch.setattr(cluster.connect, "ray_session", no_ray)
    again = label(labelled["videos"], labelled["out"], labelled["config"], progress=False, only_videos=GOOD,
                  log=lambda *_: None)
    assert {r.video_id: r.status for r in again.results} == {"0000": "skipped", "0001": "skipped"}
    assert again.frames == 0


def test_cli_with_a_manifest_per_video_gt_and_a_missing_gt_file(labelled, tmp_path, capsys):
    """``tubeflow label`` on a manifest: one video with its GT, one whose GT file is missing
    (a failure row naming it, nothing committed, exit code 1)."""
    from jobs import cli

    corpus = labelled["corpus"]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("video_id,uri,gt\n"
                        f"0000,{labelled['videos']}/0000.mp4,{corpus}/gt/panoptic_gt.json\n"
                        f"0001,{labelled['videos']}/0001.mp4,{tmp_path}/nowhere/gt.json\n")
    out = tmp_path / "out"
    code = cli.main(["label", "--input", str(manifest), "--output", str(out), "--segmenter", "precomputed",
                     "--model", f"{corpus}/perframe", "--image-id-format", IMAGE_ID, "--chunk-frames", "5",
                     "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "0001" in captured.err and "nowhere/gt.json" in captured.err
    failures = pq.read_table(out / "failures.parquet").to_pylist()
    assert [(f["video_id"], f["stage"]) for f in failures] == [("0001", "gt")]
    assert sorted(committed_markers(OutputLayout(str(out)))) == ["0000"]
    per_video = pq.read_table(out / "metrics" / "per_video.parquet").to_pylist()
    assert [v["video_id"] for v in per_video] == ["0000"] and per_video[0]["status"] == "ok"
    assert "1 labelled" in captured.out  # the summary table


def test_cli_exit_code_is_0_when_everything_is_committed(labelled, capsys):
    from jobs import cli

    code = cli.main(["label", "--input", f"{labelled['videos']}/0000.mp4", "--output", labelled["out"],
                     "--segmenter", "precomputed", "--model", f"{labelled['corpus']}/perframe",
                     "--gt", f"{labelled['corpus']}/gt/panoptic_gt.json", "--image-id-format", IMAGE_ID,
                     "--chunk-frames", "4", "--png", "--overlay", "--no-progress"])
    assert code == 0 and "1 skipped" in capsys.readouterr().out


def test_cli_names_a_missing_input(tmp_path, capsys):
    from jobs import cli

    code = cli.main(["label", "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"),
                     "--no-progress"])
    assert code == 2 and "nothing" in capsys.readouterr().err


@pytest.mark.slow  # starts a second Ray in its own process
def test_input_and_output_on_s3(labelled, s3_bucket):
    """The same job with the corpus and the outputs in object storage (moto S3)."""
    from operators import fs

    import subprocess
    import sys

    fs.write_bytes(f"{s3_bucket}/logs/0000.mp4", open(f"{labelled['videos']}/0000.mp4", "rb").read())
    out = f"{s3_bucket}/labels"
    corpus = labelled["corpus"]
    # a process of its own: its Ray workers must inherit the moto endpoint set by the fixture
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "label", "--input", f"{s3_bucket}/logs", "--output", out,
                           "--segmenter", "precomputed", "--model", f"{corpus}/perframe", "--gt",
                           f"{corpus}/gt/panoptic_gt.json", "--image-id-format", IMAGE_ID, "--chunk-frames", "4",
                           "--png", "--overlay", "--no-progress"], capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 labelled" in done.stdout
    (marker,) = committed_markers(OutputLayout(out)).values()
    assert all(fs.exists(f"{out}/{f}") for f in marker.files) and "overlays/0000.avi" in marker.files
    table = segments_table.read_segments_table(f"{out}/segments")
    local = segments_table.read_segments_table(f"{labelled['out']}/segments", ["0000"])
    assert table.select(["frame_index", "track_id", "area"]).to_pylist() == \
        local.select(["frame_index", "track_id", "area"]).to_pylist()
    assert not fs.exists(f"{out}/_staging")
    cache = os.environ["TUBEFLOW_CACHE"]  # the run's private copies of the S3 video are gone
    assert os.path.isdir(f"{cache}/runs") and not [f for _, _, files in os.walk(cache) for f in files]


def test_nightly_reprocesses_only_the_changed_video(labelled, monkeypatch):
    import pipelines.commit as commit
    from pipelines.nightly import nightly

    before = committed_markers(OutputLayout(labelled["out"]))
    columns = ["frame_index", "track_id", "category_id", "area"]
    rows_before = segments_table.read_segments_table(f"{labelled['out']}/segments", ["0001"], columns).to_pylist()
    changed = f"{labelled['videos']}/0001.mp4"
    os.utime(changed, (2_000_000_000, 2_000_000_000))  # new mtime: a changed video for the fingerprint
    for bad in ("broken.mp4", "empty.mp4"):
        os.remove(f"{labelled['videos']}/{bad}")
    shutil.move(f"{labelled['videos']}/0002.mp4", labelled["root"] / "0002.mp4")
    reads = []  # the markers this process reads (the finalize tasks' own reads happen in Ray workers)
    real = commit.read_marker
    monkeypatch.setattr(commit, "read_marker", lambda layout, video_id: reads.append(video_id) or real(layout, video_id))
    run = nightly(labelled["videos"], labelled["out"], labelled["config"], progress=False, log=lambda *_: None)
    monkeypatch.undo()
    assert {r.video_id: r.status for r in run.results} == {"0000": "skipped", "0001": "ok"}
    after = committed_markers(OutputLayout(labelled["out"]))
    # each marker read twice: to decide what to skip, and once (fresh) for everything published
    assert sorted(reads) == sorted(2 * list(after))
    assert after["0000"].run_id == before["0000"].run_id and after["0001"].run_id != before["0001"].run_id
    assert after["0001"].input_fingerprint != before["0001"].input_fingerprint
    # one complete output: the same rows as before, and no file the marker does not own
    rows_after = segments_table.read_segments_table(f"{labelled['out']}/segments", ["0001"], columns).to_pylist()
    assert rows_after == rows_before
    partition = f"{labelled['out']}/segments/video_key=0001"
    assert sorted(f"segments/video_key=0001/{f}" for f in os.listdir(partition)) == \
        [f for f in after["0001"].files if f.startswith("segments/")]
    assert run.report is not None and run.report.vpq.vpq == pytest.approx(labelled["run"].report.vpq.vpq)


def test_config_hash_follows_the_model_checksum_and_not_the_scheduling(tmp_path, monkeypatch):
    import hashlib

    from operators.segmentation.host import BUILTIN_WEIGHTS

    builtin = LabelConfig()
    checksums = builtin.model_checksums()
    assert checksums["segmenter"] == hashlib.sha256(open(BUILTIN_WEIGHTS, "rb").read()).hexdigest()
    base = builtin.config_hash(checksums)
    assert LabelConfig(chunk_frames=7, batch_size=2).config_hash(checksums) == base
    assert builtin.config_hash({**checksums, "segmenter": "other weights"}) != base
    assert LabelConfig(flow_options={"preset": "fast"}).config_hash(checksums) != base
    # test-time augmentations change the segments: the defaults (on for builtin) spelled out
    # are the same run, turning one off is another
    assert LabelConfig(flip=True, shift=True).config_hash(checksums) == base
    assert LabelConfig(flip=False).config_hash(checksums) != base
    assert LabelConfig(shift=False).config_hash(checksums) not in (base, LabelConfig(flip=False).config_hash(checksums))
    assert LabelConfig(refine=True).config_hash(checksums) == base
    assert LabelConfig(refine=False).config_hash(checksums) != base
    # so do the grouping's defaults: a release that changes them must relabel
    import operators.segmentation.spec as spec  # where the config hash reads them (no torch there)

    defaults = spec.PostprocessConfig()
    monkeypatch.setattr(spec, "PostprocessConfig", lambda: replace(defaults, thing_area=defaults.thing_area + 1))
    assert builtin.config_hash(checksums) != base


def test_label_augmentation_options_reach_the_segmentation_host():
    import argparse

    from jobs.label import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for option in ("flip", "shift", "refine"):
        for argv, on in (([], None), ([f"--{option}"], True), ([f"--no-{option}"], False)):
            config = config_from_args(parser.parse_args(["--input", "in", "--output", "out", *argv]))
            assert getattr(config, option) is on and config.host_kwargs()[option] is on


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["ray", "local"])
def test_killed_run_then_rerun_ends_with_one_complete_output_per_video(tmp_path, ray_local, executor):
    """SIGKILL a real ``tubeflow label`` (and its in-process Ray, or its local processes) once some
    videos are committed and others are in flight; the rerun must leave exactly one complete,
    correct output each."""
    import signal
    import subprocess
    import sys
    import time

    corpus = make_corpus(tmp_path / "corpus", videos=6)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "jobs.cli", "label", "--input", f"{corpus}/videos", "--output", str(out),
            "--segmenter", "precomputed", "--model", f"{corpus}/perframe", "--image-id-format", IMAGE_ID,
            "--chunk-frames", "4", "--no-progress", "--executor", executor]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = tmp_path / "killed_run.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(argv, cwd=root, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "_commits").exists():
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be killed: " + \
        log.read_text(errors="replace")[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()
    killed_with = sorted(committed_markers(OutputLayout(str(out))))
    assert len(killed_with) < 6, "the run finished before it could be killed; use a larger corpus"

    config = LabelConfig(segmenter="precomputed", model=f"{corpus}/perframe", image_id_format=IMAGE_ID,
                         chunk_frames=4)
    rerun = label(f"{corpus}/videos", str(out), config, progress=False, log=lambda *_: None)
    assert not rerun.failed
    # what was committed when the driver died stays; a commit its surviving workers completed before
    # the rerun took over (they outlive the driver, see pipelines/lease.py) is complete and stays too
    assert set(killed_with) <= {r.video_id for r in rerun.results if r.status == "skipped"}
    markers = committed_markers(OutputLayout(str(out)))
    assert sorted(markers) == [f"{v:04d}" for v in range(6)]
    assert not (out / "_staging").exists(), sorted(str(p.relative_to(out)) for p in (out / "_staging").rglob("*"))
    host = PrecomputedSegmenter(f"{corpus}/perframe")
    videos = [(v, f"{corpus}/videos/{v}.mp4") for v in markers]
    reference = label_sequentially(videos, host, image_id=lambda v, i: IMAGE_ID.format(video_id=v, frame_index=i))
    table = segments_table.read_segments_table(str(out / "segments"))
    rebuilt = {(f.video_id, f.frame_index): f.frame.ids for f in segments_table.iter_table_frames(table)}
    for video_id, marker in markers.items():
        partition = out / "segments" / f"video_key={video_id}"
        assert sorted(f"segments/video_key={video_id}/{f}" for f in os.listdir(partition)) == \
            [f for f in marker.files if f.startswith("segments/")]  # no stray part of the killed attempt
        for index, expected in enumerate(reference.frames[video_id]):
            got = rebuilt.get((video_id, index), np.zeros_like(expected.ids))
            np.testing.assert_array_equal(got, expected.ids, err_msg=f"video {video_id} frame {index}")


def test_steady_frames_per_second_leaves_out_start_up_and_tail():
    # 10 s of start-up, then 10 frames/s, then a slow last video
    times = [(10.0 + k / 10, k) for k in range(1, 91)] + [(30.0, 100)]
    run = LabelRun("r", [], seconds=30.0, frames=100, frame_times=times)
    assert run.frames_per_second == pytest.approx(100 / 30)
    assert run.steady_frames_per_second() == pytest.approx(10.0)  # frames 20 → 90 in 7 s
    assert LabelRun("r", [], seconds=1.0, frames=0).steady_frames_per_second() == 0.0


def test_ray_data_settings_are_restored_when_a_run_raises(tmp_path, ray_local, monkeypatch):
    import ray

    import pipelines.label.graph as label_module

    corpus = make_corpus(tmp_path / "corpus", videos=1, frames=2)
    context = ray.data.DataContext.get_current()
    before = context.enable_progress_bars, context.target_max_block_size

    def summaries(*args, **kwargs):  # the sub-driver (graph.window_summaries), shipped by value
        import ray

        import pipelines.label.graph as sub

        def broken(*_args, **_kwargs):
            assert ray.data.DataContext.get_current().target_max_block_size == 1  # the run's setting, in there too
            raise RuntimeError("scheduler exploded")

        sub.build_dataset = broken  # in the sub-driver, which ends with its window
        yield from sub.window_summaries(*args, **kwargs)

    monkeypatch.setattr(label_module, "window_summaries", summaries)
    config = LabelConfig(segmenter="precomputed", model=f"{corpus}/perframe", image_id_format=IMAGE_ID)
    with pytest.raises(RuntimeError, match="scheduler exploded"):
        label(f"{corpus}/videos", str(tmp_path / "out"), config, progress=False, log=lambda *_: None)
    assert (context.enable_progress_bars, context.target_max_block_size) == before


def test_association_rows_carry_a_chunk_of_frames_to_the_sink(tmp_path):
    """The associate stage emits one row per chunk (any number of tracked frames, some of which
    may be rejected), and the sink writes every good frame and counts the rejected ones."""
    from operators.association.video_operator import TrackedFrame
    from operators.formats.panoptic import PanopticFrame, SegmentInfo
    from pipelines.label.sink import write_frames
    from pipelines.label.stages import _tracked_row, batch_of

    ids = np.zeros((4, 6), np.int32)
    ids[:, :3], ids[:, 3:] = 1000, 21001  # road (category 0) and a tracked car (category 13)
    # the tracker carries (image id, timestamp_ns) through as the frames' image_id
    good = [TrackedFrame("v", i, (f"v_{i}", 1000 + i), PanopticFrame(ids, [SegmentInfo(1000, 0, 12),
                                                                         SegmentInfo(21001, 13, 12)]))
            for i in (3, 5)]
    rejected = TrackedFrame("v", 4, ("v_4", None), None, "frame 4: wrong size")
    chunk = {"video_id": "v", "uri": "drive.mcap#/cam", "frame_count": 8, "t_decode": 0.5, "t_segment": 1.0,
             "t_flow": 0.25, "t_associate": 0.1}
    held = _tracked_row(chunk, [])  # a chunk held until its predecessor arrives: no frames yet
    assert held["panoptic"].shape[0] == 0 and held["frame_indices"].shape == (0,)
    row = _tracked_row(chunk, [good[0], rejected, good[1]])
    assert row["panoptic"].shape == (3, 4, 6) and row["frame_indices"].tolist() == [3, 4, 5]

    summary = write_frames(batch_of([row]), str(tmp_path), "run", write_png=False)
    assert summary["frames_done"].tolist() == [2] and summary["frames_failed"].tolist() == [1]
    assert summary["error"].tolist() == ["frame 4: wrong size"] and summary["stage"].tolist() == ["associate"]
    assert summary["segments"].tolist() == [4] and summary["t_segment"].tolist() == [1.0]
    table = segments_table.read_segments_table(OutputLayout(str(tmp_path)).staging("run", "v") + "/segments")
    assert sorted(set(table["frame_index"].to_pylist())) == [3, 5]
    assert sorted(set(zip(table["frame_index"].to_pylist(), table["timestamp_ns"].to_pylist()))) == [(3, 1003),
                                                                                                      (5, 1005)]
    assert set(zip(table["source_uri"].to_pylist(), table["topic"].to_pylist())) == {("drive.mcap", "/cam")}


def test_builtin_model_through_ray_data_equals_the_sequential_loop(labelled, tmp_path):
    """The shipped network (flip, shift and refinement as by default) in the model actors of the
    Ray Data graph: one video, committed, with the rows of the plain loop over the same host."""
    from operators.segmentation.host import SegmentationHost

    source = f"{tmp_path}/videos"
    os.makedirs(source)
    shutil.copy(f"{labelled['videos']}/0001.mp4", f"{source}/0001.mp4")
    config = LabelConfig(segmenter="builtin", image_id_format=IMAGE_ID, chunk_frames=4)
    run = label(source, str(tmp_path / "out"), config, progress=False, log=lambda *_: None)
    assert [(r.video_id, r.status) for r in run.results] == [("0001", "ok")]
    host = SegmentationHost(**config.host_kwargs())
    assert host.flip and host.shift and host.refine
    label_sequentially([("0001", f"{source}/0001.mp4")], host,
                       image_id=lambda v, i: IMAGE_ID.format(video_id=v, frame_index=i),
                       segments_out=str(tmp_path / "sequential"))
    columns = ["frame_index", "track_id", "category_id", "area", "bbox", "mask"]
    order = [("frame_index", "ascending"), ("track_id", "ascending")]
    ours = segments_table.read_segments_table(str(tmp_path / "out" / "segments")).select(columns).sort_by(order)
    loop = segments_table.read_segments_table(str(tmp_path / "sequential")).select(columns).sort_by(order)
    assert ours.num_rows > 10 and set(ours["category_id"].to_pylist()) & {11, 13}  # people or cars were found
    assert ours.equals(loop)


def test_a_full_finalize_window_holds_the_driver_until_a_video_is_finalized(tmp_path, ray_local, monkeypatch):
    """With room for one finalize task at a time, the driver waits for each (ray.wait for one,
    then a sweep) before it launches the next, and every video is still committed once."""
    import pipelines.label.graph as graph
    import pipelines.label.passes as passes

    corpus = make_corpus(tmp_path / "corpus", videos=4, frames=3, height=32, width=64)
    most, real_add = [], passes.FinalizeWindow.add

    def add(window, handle, item):
        ended = real_add(window, handle, item)
        most.append(len(window))
        return ended

    monkeypatch.setattr(graph, "finalize_window_size", lambda cpus: 1)
    monkeypatch.setattr(passes.FinalizeWindow, "add", add)
    config = LabelConfig(segmenter="precomputed", model=f"{corpus}/perframe", image_id_format=IMAGE_ID, chunk_frames=2)
    run = label(f"{corpus}/videos", str(tmp_path / "out"), config, progress=False, log=lambda *_: None)
    assert [(r.video_id, r.status, r.frames) for r in run.results] == [(f"{v:04d}", "ok", 3) for v in range(4)]
    assert sorted(committed_markers(OutputLayout(str(tmp_path / "out")))) == [f"{v:04d}" for v in range(4)]
    assert most == [1, 1, 1, 1]  # never two finalize tasks in flight
