"""The streaming split of a Cityscapes-VPS GT JSON / pred.json per video (VideoSplit), the
per-video GT reader of both layouts, and the streamed pred.json writer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from operators.errors import CorruptFileError, FormatMismatchError, InputError
from operators.formats import segments_table
from operators.formats.ground_truth import VideoGroundTruth, iter_ground_truth, read_video_ground_truth
from operators.formats.panoptic import PanopticFrame
from operators.formats.vps_layout import PredictionWriter, read_ground_truth, read_predictions
from operators.formats.vps_stream import VideoSplit, parse_segments
from test_evaluate_pipeline import corpus, write_corpus


def _reorder(path, keys):
    """Rewrite a JSON object with its top-level keys in ``keys`` order."""
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({k: doc[k] for k in keys}))


@pytest.mark.parametrize("order", [("images", "annotations", "categories"), ("categories", "annotations", "images")])
def test_the_split_equals_the_whole_reader(tmp_path, order):
    """Any top-level key order (annotations before their images too); images without a
    prediction; int and string image ids; videos in id order, frames in frame order."""
    videos = corpus(11, n_videos=3, frames=4)
    paths = write_corpus(tmp_path, videos, skip={("0001", 2)})
    doc = json.loads((tmp_path / "gt.json").read_text())
    doc["images"].reverse()  # the split sorts; the JSON's order must not matter
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    _reorder(tmp_path / "gt.json", order)
    gt, predictions = read_ground_truth(paths["gt_json"], paths["gt_dir"]), read_predictions(paths["pred_dir"])
    with VideoSplit(paths["gt_json"], paths["pred_dir"]) as split:
        assert split.categories == gt.categories and split.frames == 12 and split.num_videos == 3
        streamed = list(split.videos())
    expected = gt.videos()
    assert [v.video_id for v in streamed] == list(expected)
    for video in streamed:
        assert [f.image for f in video.frames] == expected[video.video_id]
        for f in video.frames:
            assert f.gt_file == gt.annotations[f.image.key].file_name
            assert parse_segments(f.gt_segments_json, "t") == gt.annotations[f.image.key].segments
            if (video.video_id, f.image.frame_index // 5) == ("0001", 2):
                assert f.pred_file is None and f.pred_segments_json == "[]"
            else:
                assert parse_segments(f.pred_segments_json, "t") == predictions.annotations[f.image.key].segments


def test_integer_image_ids_keep_their_type(tmp_path):
    doc = {"images": [{"id": 7, "file_name": "a.png", "video_id": "v", "frame_index": 0}],
           "annotations": [{"image_id": 7, "file_name": "7.png", "segments_info": []}], "categories": []}
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    with VideoSplit(str(tmp_path / "gt.json")) as split:
        (video,) = split.videos()
    assert video.frames[0].image.id == 7 and video.frames[0].gt_file == "7.png"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "two annotations for image"),
    (lambda d: d["images"].append(dict(d["images"][0], id="other")), "are both video 0000 frame 0"),
    (lambda d: d["images"].append(dict(d["images"][0])), "two image records with id"),
    (lambda d: d.pop("categories"), "missing top-level key 'categories'"),
    (lambda d: d.pop("images"), "no image records"),
    (lambda d: d["annotations"][0].pop("file_name"), "annotation without 'file_name'"),
    (lambda d: d["images"][0].update(frame_index="x"), "malformed image record"),
])
def test_bad_gt_json_is_one_error_naming_the_file(tmp_path, edit, message):
    paths = write_corpus(tmp_path, corpus(12, n_videos=1, frames=2))
    doc = json.loads((tmp_path / "gt.json").read_text())
    edit(doc)
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    with pytest.raises(FormatMismatchError, match=message) as error:
        VideoSplit(paths["gt_json"], paths["pred_dir"])
    assert paths["gt_json"] in str(error.value)


def test_bad_pred_json_and_not_json(tmp_path):
    paths = write_corpus(tmp_path, corpus(13, n_videos=1, frames=2))
    pred = tmp_path / "pred" / "pred.json"
    doc = json.loads(pred.read_text())
    doc["annotations"].append(doc["annotations"][0])
    pred.write_text(json.dumps(doc))
    with pytest.raises(FormatMismatchError, match="two annotations for image") as error:
        VideoSplit(paths["gt_json"], paths["pred_dir"])
    assert str(pred) in str(error.value)
    (tmp_path / "gt.json").write_text('{"images": [1, 2')
    with pytest.raises(CorruptFileError, match="invalid JSON"):
        VideoSplit(paths["gt_json"])
    with pytest.raises(CorruptFileError, match="file not found"):
        VideoSplit(str(tmp_path / "missing.json"))


def test_the_split_files_are_removed(tmp_path):
    paths = write_corpus(tmp_path, corpus(14, n_videos=1, frames=1))
    workdir = tmp_path / "work"
    workdir.mkdir()
    with VideoSplit(paths["gt_json"], workdir=str(workdir)):
        assert len(list(workdir.iterdir())) == 1
    assert not list(workdir.iterdir())
    with pytest.raises(FormatMismatchError):
        VideoSplit(str(tmp_path / "pred" / "pred.json"), workdir=str(workdir))  # no categories
    assert not list(workdir.iterdir())


def _fields(frame):
    """What the table keeps of segments_info (its bbox is the mask's; the test corpus's are not)."""
    return [(s.id, s.category_id, s.area, s.iscrowd, s.score) for s in frame.segments]


def test_one_video_ground_truth_from_either_layout(tmp_path):
    """read_video_ground_truth gives the same frames from split JSON records and from a table
    partition; a malformed segment record or a missing annotation is an error of that video."""
    videos = corpus(15, n_videos=2, frames=3)
    paths = write_corpus(tmp_path, videos)
    gt = read_ground_truth(paths["gt_json"], paths["gt_dir"])
    table = str(tmp_path / "table")
    for video_id, images in gt.videos().items():
        segments_table.write_segments_table(table, [segments_table.frame_to_batch(
            gt.read_frame(im), video_id, im.frame_index, str(im.id), gt.categories) for im in images])
    from_json = {v.video_id: read_video_ground_truth(v, gt.categories)
                 for v in iter_ground_truth(paths["gt_json"], paths["gt_dir"])}
    from_table = {v.video_id: read_video_ground_truth(v, gt.categories) for v in iter_ground_truth(table=table)}
    assert list(from_json) == list(from_table) == ["0000", "0001"]
    for video_id in from_json:
        for (image_a, frame_a), (image_b, frame_b) in zip(from_json[video_id], from_table[video_id]):
            assert (image_a.key, image_a.frame_index, image_a.width, image_a.height) == \
                   (image_b.key, image_b.frame_index, image_b.width, image_b.height)
            assert np.array_equal(frame_a.ids, frame_b.ids) and _fields(frame_a) == _fields(frame_b)
    (video, *_) = iter_ground_truth(paths["gt_json"], paths["gt_dir"])
    video.frames[1].segments = '[{"id": 1}]'
    with pytest.raises(FormatMismatchError, match="video 0000 frame 5 .*malformed segment record"):
        read_video_ground_truth(video)
    video.frames[1].png_uri = ""
    with pytest.raises(FormatMismatchError, match="video 0000 frame 5: image .* has no GT annotation"):
        read_video_ground_truth(video)
    with pytest.raises(InputError, match="no GT rows for video nope"):
        read_video_ground_truth(VideoGroundTruth("nope", table=table))


def test_prediction_writer_streams_and_writes_the_json_last(tmp_path):
    ids = np.array([[0, 1], [1, 1]], np.int32)
    from operators.formats.panoptic import SegmentInfo

    frame = PanopticFrame(ids, [SegmentInfo(1, 13, 3, (0, 0, 2, 2), 0, 0.5)])
    with PredictionWriter(str(tmp_path / "p")) as writer:
        for n in range(3):
            writer.add(f"img{n}", frame)
        assert not (tmp_path / "p" / "pred.json").exists()
    predictions = read_predictions(str(tmp_path / "p"))
    assert sorted(predictions.annotations) == ["img0", "img1", "img2"]
    assert predictions.annotations["img2"].segments == frame.segments
    with pytest.raises(RuntimeError):
        with PredictionWriter(str(tmp_path / "q")) as writer:
            writer.add("x", frame)
            raise RuntimeError("crash")
    assert not (tmp_path / "q" / "pred.json").exists()
    with PredictionWriter(str(tmp_path / "empty")):
        pass
    assert json.loads((tmp_path / "empty" / "pred.json").read_text()) == {"annotations": []}


def test_invalid_json_is_one_line_naming_the_file(tmp_path):
    """yajl's parse error draws the spot on lines of its own: the error keeps the first."""
    (tmp_path / "gt.json").write_text('{"images": [{"id": 1,')
    with pytest.raises(CorruptFileError) as caught:
        VideoSplit(str(tmp_path / "gt.json"))
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and str(tmp_path / "gt.json") in message and "invalid JSON" in message
