"""`tubeflow convert`: Cityscapes-VPS layout ↔ segments table, both ways, GT and predictions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.cli import main
from operators.errors import FormatMismatchError
from operators.formats import convert, segments_table
from operators.formats.vps_layout import read_ground_truth, read_predictions
from test_evaluate_pipeline import corpus, write_corpus


def _segments(segments):
    """What the table keeps of segments_info (its bbox is the mask's; the test corpus's are not)."""
    return [(s.id, s.category_id, s.area, s.iscrowd, s.score) for s in segments]


def _gt_frames(gt_json, gt_dir):
    gt = read_ground_truth(gt_json, gt_dir)
    return gt.categories, {(im.video_id, im.frame_index): (im.key, im.width, im.height, gt.read_frame(im))
                           for images in gt.videos().values() for im in images}


def test_gt_round_trip_through_the_table(tmp_path):
    paths = write_corpus(tmp_path, corpus(21, n_videos=3, frames=4))
    table = str(tmp_path / "table")
    assert main(["convert", "--gt-json", paths["gt_json"], "--gt-dir", paths["gt_dir"], "--to-table", table]) == 0
    assert segments_table.list_videos(table) == ["0000", "0001", "0002"]
    assert main(["convert", "--table", table, "--to-gt-json", str(tmp_path / "back.json"),
                 "--to-gt-dir", str(tmp_path / "back")]) == 0
    categories, before = _gt_frames(paths["gt_json"], paths["gt_dir"])
    categories_back, after = _gt_frames(str(tmp_path / "back.json"), str(tmp_path / "back"))
    assert categories_back == categories and set(after) == set(before)
    for key, (image_id, width, height, frame) in before.items():
        image_id_back, width_back, height_back, frame_back = after[key]
        assert (image_id_back, width_back, height_back) == (image_id, width, height)
        assert np.array_equal(frame_back.ids, frame.ids)
        assert _segments(frame_back.segments) == _segments(frame.segments)


def test_prediction_round_trip_through_the_table(tmp_path):
    paths = write_corpus(tmp_path, corpus(22, n_videos=2, frames=3), skip={("0001", 1)})
    table = str(tmp_path / "pred_table")
    assert main(["convert", "--gt-json", paths["gt_json"], "--pred-dir", paths["pred_dir"], "--to-table", table]) == 0
    rows = segments_table.read_segments_table(table)
    assert sorted(set(zip(rows["video_id"].to_pylist(), rows["frame_index"].to_pylist()))) == \
        [("0000", 0), ("0000", 5), ("0000", 10), ("0001", 0), ("0001", 10)]  # no row for the missing prediction
    assert main(["convert", "--table", table, "--to-pred-dir", str(tmp_path / "back")]) == 0
    before, after = read_predictions(paths["pred_dir"]), read_predictions(str(tmp_path / "back"))
    assert sorted(after.annotations) == sorted(before.annotations)
    gt = read_ground_truth(paths["gt_json"], paths["gt_dir"])
    for images in gt.videos().values():
        for image in images:
            if not before.has(image):
                continue
            a, b = before.read_frame(image), after.read_frame(image)
            assert np.array_equal(a.ids, b.ids) and _segments(a.segments) == _segments(b.segments)


def test_a_frame_without_segments_is_refused_by_name(tmp_path):
    paths = write_corpus(tmp_path, corpus(23, n_videos=1, frames=2))
    pred = tmp_path / "pred" / "pred.json"
    doc = json.loads(pred.read_text())
    doc["annotations"][1]["segments_info"] = []
    pred.write_text(json.dumps(doc))
    from operators.formats.panoptic import write_panoptic_png

    write_panoptic_png(str(tmp_path / "pred" / "pan_pred" / doc["annotations"][1]["file_name"]),
                       np.zeros((12, 16), np.int32))
    with pytest.raises(FormatMismatchError, match="0000_0001_x.png: the frame has no segment"):
        convert.vps_to_table(paths["gt_json"], paths["gt_dir"], str(tmp_path / "t"), paths["pred_dir"])


@pytest.mark.parametrize("args", [["--to-table", "t"], ["--gt-json", "g", "--to-table", "t"],
                                  ["--table", "t"], ["--table", "t", "--to-gt-json", "g"], []])
def test_incomplete_arguments_are_one_error(args, capsys):
    assert main(["convert", *args]) == 2
    assert "tubeflow convert: error:" in capsys.readouterr().err
