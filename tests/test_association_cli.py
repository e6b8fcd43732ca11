"""``tubeflow track`` end to end on a small hand-made video written to disk."""
import json

import cv2
import numpy as np

from association_scenes import CAR, PERSON, Box, identity_switches, scrambled_video
from jobs.cli import main
from operators.formats.categories import CITYSCAPES_CATEGORIES
from operators.formats.panoptic import write_panoptic_png
from operators.formats.segments_table import read_segments_table
from operators.formats.vps_layout import VpsImage, read_predictions

FRAMES = 8


def write_inputs(root, video_ids=("0000", "0001")):
    """Frames (JPEG for one video, PNG for the other), per-frame predictions with scrambled ids."""
    boxes = [Box(14001, CAR, 5, 30, 14, 10, 3, 0, (200, 30, 30)), Box(12001, PERSON, 40, 20, 6, 14, 0, 1, (30, 200, 30))]
    annotations, gts = [], {}
    for v, video_id in enumerate(video_ids):
        video = scrambled_video(boxes, FRAMES, seed=v)
        gts[video_id] = [gt for _, gt, _ in video]
        for frame, _, _ in video:
            image_id = f"{video_id}_{frame.frame_index:04d}_synth"
            ext = ".jpg" if v == 0 else ".png"
            cv2.imwrite(str(root / "images" / f"{image_id}_leftImg8bit{ext}"), frame.rgb[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 100])
            write_panoptic_png(str(root / "perframe" / f"{image_id}.png"), frame.panoptic.ids)
            annotations.append({"image_id": image_id, "file_name": f"{image_id}.png",
                                "segments_info": [s.to_json() for s in frame.panoptic.segments]})
    doc = {"annotations": annotations, "categories": [c.to_json() for c in CITYSCAPES_CATEGORIES]}
    (root / "perframe.json").write_text(json.dumps(doc))
    return gts


def args(root, *extra):
    return ["track", "--images", str(root / "images"), "--perframe-json", str(root / "perframe.json"),
            "--perframe-dir", str(root / "perframe"), "--out", str(root / "out"), *extra]


def make_dirs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "perframe").mkdir()


def test_track_writes_consistent_ids_and_the_segments_table(tmp_path):
    make_dirs(tmp_path)
    gts = write_inputs(tmp_path)
    assert main(args(tmp_path)) == 0
    preds = read_predictions(str(tmp_path / "out"))
    for video_id, gt_frames in gts.items():
        images = [VpsImage(f"{video_id}_{t:04d}_synth", "", 96, 64, video_id, t) for t in range(FRAMES)]
        frames = [preds.read_frame(im) for im in images]
        switches, seen = identity_switches(frames, gt_frames)
        assert switches == 0 and all(len(s) == 1 for s in seen.values())
    table = read_segments_table(str(tmp_path / "out" / "segments"))
    assert table.num_rows == sum(len(preds.annotations[k].segments) for k in preds.annotations)
    assert set(table["track_id"].to_pylist()) >= {1000, 1001}


def test_only_annotated_and_bad_frames(tmp_path, capsys):
    make_dirs(tmp_path)
    write_inputs(tmp_path)
    (tmp_path / "perframe" / "0001_0003_synth.png").write_bytes(b"not a png")
    gt = {"images": [], "annotations": [{"image_id": f"0000_{t:04d}_synth", "file_name": "x", "segments_info": []}
                                        for t in (0, 5)] + [{"image_id": "0001_0005_synth", "file_name": "x",
                                                            "segments_info": []}],
          "categories": []}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert main(args(tmp_path, "--only-annotated", str(tmp_path / "gt.json"))) == 1
    err = capsys.readouterr().err
    assert "video 0001 frame 3" in err and "0001_0003_synth.png" in err
    preds = read_predictions(str(tmp_path / "out"))
    assert sorted(preds.annotations) == ["0000_0000_synth", "0000_0005_synth", "0001_0005_synth"]


def test_track_a_synthetic_corpus_end_to_end(tmp_path):
    """synth corpus → per-frame predictions with scrambled ids (written as COCO panoptic) →
    ``tubeflow track --only-annotated`` → VPQ against the corpus GT."""
    from operators.metrics import VideoVpq, VpqStats, frame_table
    from operators.synth import SynthConfig, write_corpus
    from operators.synth.perturb import scramble_ids
    from operators.formats.categories import categories_by_id
    from operators.formats.vps_layout import read_ground_truth

    corpus = tmp_path / "corpus"
    write_corpus(str(corpus), SynthConfig(videos=1, frames=11, height=64, width=128, seed=4, annotate_every=5))
    gt_all = read_ground_truth(str(corpus / "gt_all" / "panoptic_gt.json"), str(corpus / "gt_all" / "panoptic"))
    rng = np.random.default_rng(0)
    (tmp_path / "perframe").mkdir()
    annotations = []
    for image in gt_all.images:
        pred = scramble_ids(gt_all.read_frame(image), rng)
        write_panoptic_png(str(tmp_path / "perframe" / f"{image.id}.png"), pred.ids)
        annotations.append({"image_id": image.id, "file_name": f"{image.id}.png",
                            "segments_info": [s.to_json() for s in pred.segments]})
    (tmp_path / "perframe.json").write_text(json.dumps({"annotations": annotations,
                                                        "images": [im.to_json() for im in gt_all.images]}))
    gt_json = corpus / "gt" / "panoptic_gt.json"
    assert main(["track", "--images", str(corpus / "frames"), "--perframe-json", str(tmp_path / "perframe.json"),
                 "--perframe-dir", str(tmp_path / "perframe"), "--out", str(tmp_path / "out"),
                 "--only-annotated", str(gt_json)]) == 0

    gt = read_ground_truth(str(gt_json), str(corpus / "gt" / "panoptic"))
    preds = read_predictions(str(tmp_path / "out"))
    assert sorted(preds.annotations) == sorted(im.key for im in gt.images)
    video = VideoVpq("0000")
    for image in gt.videos()["0000"]:
        g, p = gt.read_frame(image), preds.read_frame(image)
        video.update(frame_table(image.frame_index, g.ids, g.segments, p.ids, p.segments))
    result = VpqStats.merge([video.stats()]).result(categories_by_id())
    assert result.per_k[10]["things"]["n"] > 0
    assert result.vpq > 0.95 and result.vpq_thing > 0.9, result.per_k
