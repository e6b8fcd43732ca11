"""The labelling run's GT without Ray: split per video at the door, one small document per video
to label, read back by the tasks exactly as the whole file reads; a table read per video; a video
whose GT cannot be read fails alone naming the file; nothing of the split is left behind, also
when the run fails."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

import pytest

from operators import fs
from operators.formats import convert
from operators.formats.vps_layout import read_ground_truth
from pipelines.label.ground_truth import (GT_DOCS_DIR, GtRef, RunGroundTruth, read_video_gt, table_frames)
from pipelines.label.stages import plan_video
from test_evaluate_pipeline import corpus, write_corpus


@pytest.fixture
def gt(tmp_path, monkeypatch):
    """A GT of 3 videos (4 annotated frames each), its table, and this test's own temp dir (the
    split's files go there)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    paths = write_corpus(tmp_path, corpus(5, n_videos=3, frames=4))
    table = str(tmp_path / "table")
    convert.vps_to_table(paths["gt_json"], paths["gt_dir"], table)
    return {**paths, "table": table, "tmp": tmp_path / "tmp"}


def test_each_video_gets_its_own_document_read_back_as_the_whole_file_reads(gt, tmp_path):
    staging = str(tmp_path / "out" / "_staging" / "run")
    with RunGroundTruth.open(gt["gt_json"], gt["gt_dir"], {}) as run_gt:
        assert os.listdir(gt["tmp"])  # the split, on local disk
        whole = read_ground_truth(gt["gt_json"], gt["gt_dir"])
        assert run_gt.categories == whole.categories
        refs = run_gt.refs(["0000", "0002", "not-in-gt"], staging)
        assert sorted(refs) == ["0000", "0002"]
        assert not os.listdir(gt["tmp"])  # the split is deleted once the documents are written
        for video_id, ref in refs.items():
            assert len(ref.to_text()) < 300  # what the video's row carries
            doc = json.loads(fs.read_bytes(ref.doc))
            assert {im["video_id"] for im in doc["images"]} == {video_id}
            got = read_video_gt(GtRef.from_text(ref.to_text()))
            images = whole.videos()[video_id]
            assert got.names == {im.frame_index: str(im.id) for im in images}
            assert [(f.image, f.png_uri, f.segments) for f in got.frames] == \
                [(im, whole.png_uri(im), whole.annotations[im.key].segments) for im in images]
        run_gt.remove_documents()
        assert not os.path.exists(os.path.join(staging, GT_DOCS_DIR))
    assert not os.listdir(gt["tmp"])


def test_a_table_video_is_read_from_its_partition(gt, tmp_path):
    with RunGroundTruth.open(gt["table"], None, {}) as run_gt:
        whole = read_ground_truth(gt["gt_json"], gt["gt_dir"])
        assert run_gt.categories == whole.categories
        refs = run_gt.refs(["0001", "zzz"], str(tmp_path / "staging"))
    assert refs == {"0001": GtRef("0001", table=gt["table"])}
    got = read_video_gt(refs["0001"])
    images = whole.videos()["0001"]
    assert [f.image.frame_index for f in got.frames] == [im.frame_index for im in images]
    assert got.names == {im.frame_index: str(im.id) for im in images}
    pixels = table_frames("0001", got.frames[1:3])  # only the frames asked for are rebuilt
    assert sorted(pixels) == [f.image.frame_index for f in got.frames[1:3]]
    for f in got.frames[1:3]:
        expected = whole.read_frame(next(im for im in images if im.frame_index == f.image.frame_index))
        assert (pixels[f.image.frame_index].ids == expected.ids).all()
        assert pixels[f.image.frame_index].segments == f.segments


def test_a_manifests_per_video_gt_wins_and_gives_the_categories(gt, tmp_path):
    with RunGroundTruth.open(None, None, {"0001": str(tmp_path / "missing.json"), "0002": gt["gt_json"]}) as run_gt:
        assert run_gt.categories == read_ground_truth(gt["gt_json"], gt["gt_dir"]).categories
        refs = run_gt.refs(["0001", "0002"], str(tmp_path / "staging"))
    assert refs["0002"] == GtRef("0002", doc=gt["gt_json"], png_dir=fs.join(str(tmp_path), "panoptic"))


@pytest.mark.parametrize("broken", ["doc", "table"])
def test_a_video_whose_gt_cannot_be_read_fails_alone_in_stage_gt_naming_the_file(gt, tmp_path, broken):
    from operators.synth import SynthConfig, write_corpus as write_videos

    write_videos(str(tmp_path / "videos"), SynthConfig(videos=1, frames=4, height=32, width=64, seed=0))
    uri = str(tmp_path / "videos" / "videos" / "0000.mp4")
    if broken == "doc":
        ref, names = GtRef("0000", doc=str(tmp_path / "gone.json"), png_dir=str(tmp_path)), "gone.json"
    else:
        partition = next(p for p in os.listdir(gt["table"]) if p.endswith("0000"))
        part = next(iter(os.listdir(os.path.join(gt["table"], partition))))
        with open(os.path.join(gt["table"], partition, part), "wb") as f:
            f.write(b"not parquet")
        ref, names = GtRef("0000", table=gt["table"]), part
    rows = plan_video({"video_id": "0000", "uri": uri, "gt": ref.to_text()}, 2, "{video_id}_{frame_index}")
    assert len(rows) == 1 and rows[0]["stage"] == "gt" and names in rows[0]["error"], rows
    assert len(rows[0]["error"].splitlines()) == 1
    good = plan_video({"video_id": "0000", "uri": uri, "gt": ""}, 2, "{video_id}_{frame_index}")
    assert [r["error"] for r in good] == ["", ""]


def test_the_run_leaves_no_split_and_no_documents_when_it_fails(gt, tmp_path, monkeypatch):
    """The run fails after the per-video documents were written: they go, so does the split."""
    from operators.synth import SynthConfig, write_corpus as write_videos
    from pipelines.label import driver, graph, label
    from pipelines.label.config import LabelConfig

    write_videos(str(tmp_path / "v"), SynthConfig(videos=2, frames=2, height=32, width=64, seed=0))
    written = []
    refs = RunGroundTruth.refs

    def spy(self, video_ids, staging):
        out = refs(self, video_ids, staging)
        written.extend(r.doc for r in out.values())
        return out

    def boom(*_, **__):
        raise RuntimeError("the run failed")

    monkeypatch.setattr(RunGroundTruth, "refs", spy)
    monkeypatch.setattr(driver, "_ray_for_work", lambda *_: contextlib.nullcontext())
    monkeypatch.setattr(graph, "stage_plan", boom)  # either engine: Ray's ...
    monkeypatch.setattr(driver, "local_plan", boom)  # ... or the local one
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the run failed"):
        label(str(tmp_path / "v" / "videos"), str(out), LabelConfig(gt_json=gt["gt_json"], gt_dir=gt["gt_dir"]),
              progress=False, log=lambda *_: None)
    assert len(written) == 2 and all(w.startswith(str(out)) for w in written)
    assert not any(os.path.exists(w) for w in written)
    assert not os.listdir(gt["tmp"])
