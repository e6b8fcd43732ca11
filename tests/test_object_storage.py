"""Label, add videos, nightly — on a moto S3 server on 127.0.0.1 and on local files: the same
committed videos, the same segment rows, pred.json and metrics over exactly the committed videos.

(Once, on S3, nightly's pred.json and metrics covered only the first night's videos: the driver
published from an fsspec listing cached before the workers committed the new ones.)"""
from __future__ import annotations

import io
import json

import pyarrow.parquet as pq

import pytest

from operators import fs
from operators.formats import segments_table
from operators.formats.vps_layout import PredictionWriter
from operators.synth import SynthConfig, generate_video, write_corpus
from pipelines.commit import OutputLayout, committed_markers
from pipelines.label import label
from pipelines.label.config import LabelConfig
from pipelines.nightly import nightly

IMAGE_ID = "{video_id}_{frame_index:04d}_synth"
FRAMES = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cfg = SynthConfig(videos=4, frames=FRAMES, height=64, width=128, seed=0, annotate_every=2)
    write_corpus(str(root), cfg)
    with PredictionWriter(str(root / "perframe")) as writer:
        for v in range(cfg.videos):
            for frame in generate_video(cfg, v):
                writer.add(frame.image_id, frame.panoptic)
    return root


def _nights(corpus, base: str) -> dict:
    """Night 1 labels two videos; two more arrive; night 2 (nightly) labels them and republishes."""
    inputs, out = f"{base}/inputs", f"{base}/out"
    for name in ("0000.mp4", "0001.mp4"):
        fs.write_bytes(f"{inputs}/{name}", (corpus / "videos" / name).read_bytes())
    config = LabelConfig(segmenter="precomputed", model=str(corpus / "perframe"),
                         gt_json=str(corpus / "gt" / "panoptic_gt.json"), image_id_format=IMAGE_ID, chunk_frames=3,
                         write_png=True)
    first = label(inputs, out, config, progress=False, log=lambda *_: None)
    for name in ("0002.mp4", "0003.mp4"):
        fs.write_bytes(f"{inputs}/{name}", (corpus / "videos" / name).read_bytes())
    second = nightly(inputs, out, config, progress=False, log=lambda *_: None)
    pred = json.loads(fs.read_bytes(f"{out}/pred.json"))["annotations"]
    per_video = pq.read_table(io.BytesIO(fs.read_bytes(f"{out}/metrics/per_video.parquet")))
    rows = segments_table.read_segments_table(f"{out}/segments", columns=["video_id", "frame_index", "track_id",
                                                                          "area"]).to_pylist()
    return {"first": {r.video_id: r.status for r in first.results},
            "second": {r.video_id: r.status for r in second.results},
            "markers": sorted(committed_markers(OutputLayout(out))), "pred": sorted(a["image_id"] for a in pred),
            "vpq": second.report.vpq.vpq, "per_video": sorted(set(per_video.column("video_id").to_pylist())),
            "rows": rows,
            "staging": fs.exists(f"{out}/_staging")}


def test_label_add_videos_nightly_on_s3_equals_local_files(corpus, tmp_path, s3_bucket, ray_local, monkeypatch):
    monkeypatch.setenv("TUBEFLOW_LEASE_SECONDS", "3600")  # no renewal (a write) between listing and publishing
    local = _nights(corpus, str(tmp_path / "local"))
    remote = _nights(corpus, f"{s3_bucket}/night")
    videos = ["0000", "0001", "0002", "0003"]
    assert local["first"] == {"0000": "ok", "0001": "ok"}
    assert local["second"] == {"0000": "skipped", "0001": "skipped", "0002": "ok", "0003": "ok"}
    assert local["markers"] == videos
    assert local["pred"] == sorted(IMAGE_ID.format(video_id=v, frame_index=i) for v in videos for i in range(FRAMES))
    assert local["per_video"] == videos
    for key in ("first", "second", "markers", "pred", "rows", "per_video"):
        assert remote[key] == local[key], key
    assert remote["vpq"] == pytest.approx(local["vpq"])
    assert not remote["staging"] and not local["staging"]
    assert sorted({r["video_id"] for r in remote["rows"]}) == videos


@pytest.mark.slow  # a real `tubeflow label` on S3, killed, then rerun
@pytest.mark.parametrize("executor", ["ray", "local"])
def test_driver_killed_during_commits_on_s3_then_rerun(corpus, s3_bucket, tmp_path, ray_local, executor):
    """SIGKILL ``tubeflow label`` (driver and the Ray it started) as soon as the first commit
    appears on S3; the rerun ends with exactly one complete output per video, row for row the
    same as a clean run on local files, and no staging, pending intent or lease holder left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pipelines.lease import LEASE_NAME, LeaseRecord

    inputs, out = f"{s3_bucket}/inputs", f"{s3_bucket}/out"
    for name in ("0000.mp4", "0001.mp4", "0002.mp4", "0003.mp4"):
        fs.write_bytes(f"{inputs}/{name}", (corpus / "videos" / name).read_bytes())
    argv = [sys.executable, "-m", "jobs.cli", "label", "--input", inputs, "--output", out, "--segmenter",
            "precomputed", "--model", str(corpus / "perframe"), "--image-id-format", IMAGE_ID, "--chunk-frames", "2",
            "--png", "--no-progress", "--executor", executor]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = tmp_path / "killed_run.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(argv, cwd=root, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    filesystem, commits = fs.fresh(f"{out}/_commits")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        filesystem.invalidate_cache()
        if filesystem.exists(commits) and filesystem.ls(commits):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be killed: " + \
        log.read_text(errors="replace")[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_with = sorted(committed_markers(OutputLayout(out)))
    assert len(killed_with) < 4, "the run finished before it could be killed"

    config = LabelConfig(segmenter="precomputed", model=str(corpus / "perframe"), image_id_format=IMAGE_ID,
                         chunk_frames=2, write_png=True)
    rerun = label(inputs, out, config, progress=False, log=lambda *_: None)
    # a commit the killed run's surviving workers completed before the takeover is complete and stays
    assert not rerun.failed and set(killed_with) <= {r.video_id for r in rerun.results if r.status == "skipped"}
    clean = label(str(corpus / "videos"), str(tmp_path / "clean"), config, progress=False, log=lambda *_: None)
    assert not clean.failed
    columns = ["video_id", "frame_index", "track_id", "category_id", "area"]
    assert segments_table.read_segments_table(f"{out}/segments", columns=columns).to_pylist() == \
        segments_table.read_segments_table(str(tmp_path / "clean" / "segments"), columns=columns).to_pylist()
    markers = committed_markers(OutputLayout(out))
    assert sorted(markers) == ["0000", "0001", "0002", "0003"]
    for marker in markers.values():  # each marker's files are there, and no file is unowned
        assert all(fs.exists(f"{out}/{f}") for f in marker.files)
    filesystem, bucket_out = fs.fresh(out)
    owned = {f for m in markers.values() for f in m.files}
    for path in filesystem.find(bucket_out):
        relative = path[len(bucket_out.rstrip("/")) + 1:]
        if relative.split("/")[0] in ("segments", "pan_pred", "annotations"):
            assert relative in owned, relative
    assert not filesystem.find(f"{bucket_out}/_staging") and not [
        p for p in filesystem.find(f"{bucket_out}/_commits") if p.endswith(".pending.json")]
    assert LeaseRecord.from_json(fs.read_bytes(f"{out}/{LEASE_NAME}")).released
    pred = json.loads(fs.read_bytes(f"{out}/pred.json"))["annotations"]
    assert len(pred) == 4 * FRAMES
