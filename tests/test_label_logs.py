"""``tubeflow label`` on driving logs end to end: a synthetic MCAP corpus (``tubeflow synth
--format mcap``) and the same corpus as ROS 1 bags, every camera topic labelled with its
timestamps; the review MCAP read back with the ``mcap`` library; bad logs fail alone with
errors naming the log, the topic and the message."""
from __future__ import annotations

import base64
import json
import os

import cv2
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import cli
from operators.formats import segments_table
from operators.formats.panoptic import PanopticFrame, segments_from_ids
from operators.formats.vps_layout import PredictionWriter
from operators.review.mcap import ANNOTATIONS_SCHEMA, IMAGE_SCHEMA
from operators.review.overlay import colourise
from operators.synth import SynthConfig, generate_video
from operators.synth.perturb import scramble_ids
from operators.video import open_video, split_stream_uri
from pipelines.commit import OutputLayout, committed_markers
from test_log_sources import _bad_log

FRONT, REAR = "/camera/front/image_raw/compressed", "/camera/rear/image_raw"
VIDEOS = [f"log_0000:{FRONT}", f"log_0000:{REAR}", f"log_0001:{FRONT}"]
CFG = dict(videos=3, frames=8, height=64, width=128, seed=0, annotate_every=2)


def synth_corpus(root, fmt: str) -> str:
    assert cli.main(["synth", "--out", str(root), "--videos", "3", "--frames", "8", "--height", "64", "--width", "128",
                     "--annotate-every", "2", "--format", fmt]) == 0
    cfg = SynthConfig(**CFG)
    rng = np.random.default_rng(0)
    with PredictionWriter(str(root / "perframe")) as writer:  # the GT with scrambled ids: a segmenter's output
        for v in range(cfg.videos):
            for frame in generate_video(cfg, v):
                writer.add(frame.image_id, scramble_ids(frame.panoptic, rng))
    return str(root)


def label_cli(corpus: str, out: str, *extra: str) -> int:
    return cli.main(["label", "--input", f"{corpus}/logs", "--output", out, "--segmenter", "precomputed", "--model",
                     # GT of every frame: it names every frame (the predictions are keyed by those names)
                     f"{corpus}/perframe", "--gt", f"{corpus}/gt_all/panoptic_gt.json", "--stride", "1",
                     "--chunk-frames", "3",
                     "--no-progress", *extra])


@pytest.fixture(scope="module")
def mcap_run(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("mcap")
    corpus = synth_corpus(root / "corpus", "mcap")
    out = str(root / "out")
    code = label_cli(corpus, out, "--png", "--overlay", "--review", "mcap")
    return {"corpus": corpus, "out": out, "code": code}


def test_every_camera_topic_of_every_log_is_labelled(mcap_run):
    assert mcap_run["code"] == 0
    assert sorted(committed_markers(OutputLayout(mcap_run["out"]))) == sorted(VIDEOS)
    manifest = json.loads(open(f"{mcap_run['out']}/run_manifest.json").read())
    assert manifest["totals"] == {"ok": 3, "skipped": 0, "failed": 0}
    log0 = f"{mcap_run['corpus']}/logs/log_0000.mcap"
    assert manifest["sources"][f"log_0000:{REAR}"] == {"source_uri": log0, "topic": REAR}


def _times(video_uri: str) -> list[int]:
    with open_video(video_uri) as source:
        return source.read_timed(0, source.meta.frame_count)[1]


def test_segments_table_and_pred_json_carry_each_frames_header_stamp(mcap_run):
    corpus, out = mcap_run["corpus"], mcap_run["out"]
    table = segments_table.read_segments_table(f"{out}/segments")
    pred = json.loads(open(f"{out}/pred.json").read())
    for video_id in VIDEOS:
        log_id, topic = video_id.split(":", 1)
        uri = f"{corpus}/logs/{log_id}.mcap#{topic}"
        expected = _times(uri)
        assert len(set(expected)) == 8 and all(t > 1.6e18 for t in expected)  # Unix-time header stamps
        rows = table.filter(pc.equal(table["video_id"], video_id)).to_pylist()
        assert {(r["frame_index"], r["timestamp_ns"]) for r in rows} == set(enumerate(expected))
        assert {(r["source_uri"], r["topic"]) for r in rows} == {split_stream_uri(uri)}
        images = sorted((im for im in pred["images"] if im["video_id"] == video_id), key=lambda im: im["frame_index"])
        assert [im["timestamp_ns"] for im in images] == expected
    # the files carry the video_id column: a reader of one file sees the id
    part = next(p for p in os.listdir(f"{out}/segments") if p.startswith("video_key="))
    files = os.listdir(f"{out}/segments/{part}")
    assert set(pq.read_table(f"{out}/segments/{part}/{files[0]}")["video_id"].to_pylist()) <= set(VIDEOS)


def test_review_mcap_opens_with_the_expected_topics_schemas_and_stamps(mcap_run):
    from mcap.reader import make_reader

    corpus, out = mcap_run["corpus"], mcap_run["out"]
    table = segments_table.read_segments_table(f"{out}/segments")
    with open(f"{out}/review/log_0000.mcap", "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        topics = {c.topic: summary.schemas[c.schema_id] for c in summary.channels.values()}
        assert set(topics) == {f"{FRONT}/panoptic", f"{FRONT}/panoptic/annotations", f"{REAR}/panoptic",
                               f"{REAR}/panoptic/annotations"}
        assert {t: (s.name, s.encoding) for t, s in topics.items()} == {
            f"{FRONT}/panoptic": (IMAGE_SCHEMA, "jsonschema"), f"{REAR}/panoptic": (IMAGE_SCHEMA, "jsonschema"),
            f"{FRONT}/panoptic/annotations": (ANNOTATIONS_SCHEMA, "jsonschema"),
            f"{REAR}/panoptic/annotations": (ANNOTATIONS_SCHEMA, "jsonschema")}
        assert all(json.loads(s.data)["title"] == s.name for s in topics.values())
        messages = [(c.topic, m.log_time, json.loads(m.data)) for _, c, m in reader.iter_messages()]
    from operators.video.log_source import LogTopicSource

    for camera in (FRONT, REAR):
        video_id = f"log_0000:{camera}"
        with LogTopicSource(f"{corpus}/logs/log_0000.mcap#{camera}") as source:
            log_times, stamps = source.times, source.read_timed(0, 8)[1]
        images = [(t, m) for topic, t, m in messages if topic == f"{camera}/panoptic"]
        notes = [(t, m) for topic, t, m in messages if topic == f"{camera}/panoptic/annotations"]
        assert [t for t, _ in images] == [t for t, _ in notes] == log_times  # the raw messages' log times
        assert [m["timestamp"]["sec"] * 10 ** 9 + m["timestamp"]["nsec"] for _, m in images] == stamps
        rows = table.filter(pc.equal(table["video_id"], video_id))
        frames = {f.frame_index: f.frame for f in segments_table.iter_table_frames(rows)}
        for k in (0, 5):
            png = cv2.imdecode(np.frombuffer(base64.b64decode(images[k][1]["data"]), np.uint8), cv2.IMREAD_COLOR)
            np.testing.assert_array_equal(png[..., ::-1], colourise(frames[k].ids))
            things = sorted(f"{s.id} {name}" for s in frames[k].segments if s.category_id >= 11 and not s.iscrowd
                            for name in [_name(s.category_id)])
            texts = sorted(t["text"] for t in notes[k][1]["texts"] if "crowd" not in t["text"])
            assert texts == things and things
            assert {p["type"] for p in notes[k][1]["points"]} == {2}  # a line loop per box


def _name(category_id: int) -> str:
    from operators.formats.categories import CITYSCAPES_CATEGORIES

    return CITYSCAPES_CATEGORIES[category_id].name


def test_report_lists_videos_worst_first_with_thumbnails_and_overlays_are_labelled(mcap_run):
    out = mcap_run["out"]
    page = open(f"{out}/review/index.html").read()
    vpq = {}
    for video_id in VIDEOS:
        marker = committed_markers(OutputLayout(out))[video_id]
        thumb = next(f for f in marker.files if f.startswith("thumbnails/"))
        assert cv2.imread(f"{out}/{thumb}") is not None and f"../{thumb}" in page.replace("&#x27;", "'")
    manifest = json.loads(open(f"{out}/run_manifest.json").read())
    vpq = {v: manifest["videos"][v]["metrics"]["vpq"] for v in VIDEOS}
    order = [page.index(v) for v in sorted(VIDEOS, key=lambda v: vpq[v])]
    assert order == sorted(order) and "VPQ (ascending)" in page
    with open_video(f"{out}/overlays/{_key(VIDEOS[0])}.avi") as overlay:
        assert overlay.meta.frame_count == 8


def _key(video_id: str) -> str:
    from operators.ids import video_key

    return video_key(video_id)


@pytest.mark.slow  # a third labelling run; the bag path runs by default in the bad-logs test
def test_a_ros1_bag_corpus_is_labelled_like_the_mcap_one(mcap_run, tmp_path):
    corpus = synth_corpus(tmp_path / "corpus", "bag")
    out = str(tmp_path / "out")
    assert label_cli(corpus, out) == 0
    bag = segments_table.read_segments_table(f"{out}/segments")
    mcap = segments_table.read_segments_table(f"{mcap_run['out']}/segments")
    columns = ["video_id", "frame_index", "timestamp_ns", "track_id", "category_id", "area", "topic"]
    order = [("video_id", "ascending"), ("frame_index", "ascending"), ("track_id", "ascending")]
    # the same frames (JPEG decoded the same way), the same stamps, the same labels
    assert bag.select(columns).sort_by(order).equals(mcap.select(columns).sort_by(order))
    assert set(bag["source_uri"].to_pylist()) == {f"{corpus}/logs/log_0000.bag", f"{corpus}/logs/log_0001.bag"}


def test_bad_logs_fail_alone_with_clear_errors(tmp_path, ray_local, capsys):
    """An MCAP and a ROS 1 bag, each with a good camera, a corrupt message on another camera
    and an unsupported encoding on a third, plus a bag that is not one: the good cameras are
    labelled with their stamps, every other video fails alone, named down to the message."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for ext in ("mcap", "bag"):
        _bad_log(str(logs / f"bad.{ext}"))  # /cam/good fine, /cam/bad message 2 corrupt, /cam/depth 32FC1
    os.rename(logs / "bad.bag", logs / "bad1.bag")
    (logs / "junk.bag").write_bytes(b"#ROSBAG V2.0\n" + b"\x00" * 64)
    ids = np.zeros((40, 56), np.int32)
    ids[20:, :], ids[5:15, 10:30] = 1, 21001  # road and a car
    frame = PanopticFrame(ids, segments_from_ids(ids, {1: 0, 21001: 13}))
    with PredictionWriter(str(tmp_path / "pred")) as writer:  # image ids name their video (checked at the door)
        for log in ("bad", "bad1"):
            for topic in ("/cam/good", "/cam/bad", "/cam/depth"):
                for k in range(4):
                    writer.add(f"{log}:{topic}_{k:06d}", frame)
    code = cli.main(["label", "--input", str(logs), "--output", str(tmp_path / "out"), "--segmenter", "precomputed",
                     "--model", str(tmp_path / "pred"), "--image-id-format", "{video_id}_{frame_index:06d}",
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(committed_markers(OutputLayout(str(tmp_path / "out")))) == ["bad1:/cam/good", "bad:/cam/good"]
    table = segments_table.read_segments_table(str(tmp_path / "out" / "segments"))
    for log, ext in (("bad", "mcap"), ("bad1", "bag")):
        rows = table.filter(pc.equal(table["video_id"], f"{log}:/cam/good")).to_pylist()
        assert {(r["frame_index"], r["timestamp_ns"]) for r in rows} == \
            set(enumerate(_times(f"{logs}/{log}.{ext}#/cam/good")))
    failures = {r["video_id"]: r for r in pq.read_table(tmp_path / "out" / "failures.parquet").to_pylist()}
    assert set(failures) == {"bad:/cam/bad", "bad:/cam/depth", "bad1:/cam/bad", "bad1:/cam/depth", "junk"}
    for log, ext in (("bad", "mcap"), ("bad1", "bag")):
        bad, depth = failures[f"{log}:/cam/bad"], failures[f"{log}:/cam/depth"]
        assert f"{logs}/{log}.{ext} topic /cam/bad message 2" in bad["error"]
        assert "corrupt message" in bad["error"] and bad["stage"] == "decode"
        assert f"{logs}/{log}.{ext} topic /cam/depth message 0" in depth["error"]
        assert "unsupported image encoding '32FC1'" in depth["error"]
    assert f"{logs}/junk.bag: not a readable ROS 1 bag" in failures["junk"]["error"]
    assert "bad:/cam/bad" in err and "message 2" in err
