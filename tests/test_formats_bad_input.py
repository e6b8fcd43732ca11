"""The readers and writers of operators/formats (COCO-panoptic PNG, the Cityscapes-VPS
layout, .flo) and of video sources: round trips, then every bad input of issue 2, each
raising our exception type with a message that names the file and the problem."""
from __future__ import annotations

import json
import os
import uuid

import cv2
import fsspec
import numpy as np
import pytest

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError, InputError
from operators.formats.categories import CITYSCAPES_CATEGORIES, categories_by_id
from operators.formats.flo import read_flo, write_flo
from operators.formats.panoptic import (PanopticFrame, read_panoptic_png, segments_from_ids,
                                        write_panoptic_png)
from operators.formats.vps_layout import (PredictionWriter, VpsImage, read_ground_truth, read_predictions,
                                          write_ground_truth)
from operators.video import ContainerSource, VideoWriter, open_video

H, W = 24, 40
CATEGORY = categories_by_id()


def make_frame(seed: int = 0) -> PanopticFrame:
    """Road, sky, two cars (one with an id ≥ 65536: all three PNG channels used), a crowd of
    persons and a VOID band."""
    ids = np.zeros((H, W), np.int32)
    ids[: H // 2] = 10_000  # sky (category 10)
    ids[H // 2:] = 1_000  # road (category 0)
    ids[14:20, 3 + seed:12 + seed] = 14_001  # car 1
    ids[13:22, 20:30] = 70_000 + 14_002  # car 2: id ≥ 65536
    ids[2:6, 30:38] = 12_000  # person crowd
    ids[:, 38:] = 0  # VOID
    category = {10_000: 10, 1_000: 0, 14_001: 13, 84_002: 13, 12_000: 11}
    return PanopticFrame(ids, segments_from_ids(ids, category, iscrowd_of={12_000: 1}))


def fresh_memory_uri() -> str:
    return f"memory://tubeflow-test-{uuid.uuid4().hex[:8]}"


def expect(error: type[InputError], uri: str, problem: str):
    """pytest.raises for our error type with ``uri`` and ``problem`` both in the message."""
    return pytest.raises(error, match=rf"{_escape(uri)}.*{problem}")


def _escape(text: str) -> str:
    import re

    return re.escape(str(text))


# -- round trips -----------------------------------------------------------------------------


def test_png_ids_round_trip_including_ids_above_65535(tmp_path):
    frame = make_frame()
    uri = str(tmp_path / "frame.png")
    write_panoptic_png(uri, frame.ids)
    ids = read_panoptic_png(uri)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, frame.ids)
    rgb = cv2.imread(uri, cv2.IMREAD_COLOR)[..., ::-1].astype(int)  # independent decode: id = R + 256G + 65536B
    np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], frame.ids)


def test_png_round_trip_through_memory_uri():
    base = fresh_memory_uri()
    write_panoptic_png(f"{base}/a/frame.png", make_frame().ids)
    np.testing.assert_array_equal(read_panoptic_png(f"{base}/a/frame.png"), make_frame().ids)
    fsspec.filesystem("memory").rm(base.split("://")[1], recursive=True)


def _images(video_id: str, count: int, with_identity: bool = True) -> list[VpsImage]:
    return [VpsImage(f"{video_id}_{t:04d}_city_{t:06d}", f"{video_id}_{t:04d}_city_{t:06d}_leftImg8bit.png",
                     W, H, video_id if with_identity else "", t) for t in range(count)]


@pytest.mark.parametrize("with_identity", [True, False])
def test_ground_truth_layout_round_trip(tmp_path, with_identity):
    """write_ground_truth → read_ground_truth; without video_id/frame_index in the JSON the
    identity comes from the VVVV_FFFF_ naming."""
    images = _images("0005", 3, with_identity) + _images("0001", 2, with_identity)
    frames = {im.id: make_frame(seed=i) for i, im in enumerate(images)}
    json_uri, png_dir = str(tmp_path / "gt.json"), str(tmp_path / "panoptic")
    write_ground_truth(json_uri, png_dir, [(im, frames[im.id]) for im in images], CITYSCAPES_CATEGORIES)
    if not with_identity:  # strip the explicit identity: the reader must fall back to the names
        doc = json.loads(open(json_uri).read())
        for rec in doc["images"]:
            del rec["video_id"], rec["frame_index"]
        open(json_uri, "w").write(json.dumps(doc))
    gt = read_ground_truth(json_uri, png_dir)
    videos = gt.videos()
    assert list(videos) == ["0001", "0005"]
    assert [im.frame_index for im in videos["0005"]] == [0, 1, 2]
    for image in gt.images:
        frame = gt.read_frame(image)
        np.testing.assert_array_equal(frame.ids, frames[image.id].ids)
        assert frame.segments == frames[image.id].segments


def test_prediction_layout_round_trip_on_s3(s3_bucket):
    images = _images("0000", 3)
    frames = {im.id: make_frame(seed=i) for i, im in enumerate(images)}
    for seg in frames[images[1].id].segments:
        seg.score = 0.25
    pred_dir = f"{s3_bucket}/pred"
    with PredictionWriter(pred_dir) as writer:
        for image in images:
            writer.add(image.id, frames[image.id])
    assert fs.exists(f"{pred_dir}/pred.json") and fs.exists(f"{pred_dir}/pan_pred/{images[0].id}.png")
    predictions = read_predictions(pred_dir)
    for image in images:
        frame = predictions.read_frame(image, known_categories=CATEGORY)
        np.testing.assert_array_equal(frame.ids, frames[image.id].ids)
        assert frame.segments == frames[image.id].segments


def test_flo_round_trip(tmp_path):
    flow = np.random.default_rng(0).normal(size=(H, W, 2)).astype(np.float32)
    uri = str(tmp_path / "f.flo")
    write_flo(uri, flow)
    np.testing.assert_array_equal(read_flo(uri), flow)
    data = open(uri, "rb").read()  # independent check of the Middlebury layout
    assert np.frombuffer(data[:4], np.float32)[0] == np.float32(202021.25)
    assert np.frombuffer(data[4:12], np.int32).tolist() == [W, H]


def test_atomic_write_stages_under_a_name_no_reader_takes_for_the_file(tmp_path):
    """Readers select files by suffix (markers `*.json`, frames `*.png`): while a file is
    being written, its staging name is hidden and does not end like the file."""
    target = tmp_path / "out" / "video.json"
    with fs.atomic_write(str(target)) as f:
        f.write(b"{}")
        staged = os.listdir(target.parent)
    assert len(staged) == 1 and staged[0].startswith(".") and not staged[0].endswith(".json"), staged
    assert os.listdir(target.parent) == ["video.json"]


@pytest.mark.parametrize("where", ["local", "memory", "s3"])
def test_atomic_write_leaves_nothing_when_the_block_fails(where, tmp_path, request):
    """A writer that fails half-way must not leave the half under the final name, nor an
    earlier complete version replaced by it: on an object store too (closing an fsspec
    file there uploads what was written, whatever the block raised)."""
    base = {"local": lambda: str(tmp_path), "memory": fresh_memory_uri,
            "s3": lambda: request.getfixturevalue("s3_bucket")}[where]()
    new, kept = fs.join(base, "out/new.bin"), fs.join(base, "out/kept.bin")
    fs.write_bytes(kept, b"complete")
    for uri in (new, kept):
        with pytest.raises(RuntimeError, match="killed"):
            with fs.atomic_write(uri) as f:
                f.write(b"half")
                raise RuntimeError("killed")
    assert not fs.exists(new)
    assert fs.read_bytes(kept) == b"complete"
    filesystem, out = fs.filesystem(fs.join(base, "out"))
    assert [p.rsplit("/", 1)[-1] for p in filesystem.ls(out, detail=False)] == ["kept.bin"]  # no staging file


# -- bad input: panoptic PNG and the VPS layout ---------------------------------------------------


@pytest.fixture
def gt_layout(tmp_path):
    """A valid GT layout of 2 frames; tests break one thing in it."""
    images = _images("0000", 2)
    json_uri, png_dir = str(tmp_path / "gt.json"), str(tmp_path / "panoptic")
    write_ground_truth(json_uri, png_dir, [(im, make_frame()) for im in images], CITYSCAPES_CATEGORIES)
    return json_uri, png_dir, images


def _edit_json(json_uri: str, edit) -> None:
    doc = json.loads(open(json_uri).read())
    edit(doc)
    open(json_uri, "w").write(json.dumps(doc))


@pytest.mark.parametrize("decoder", ["libspng", "opencv"])
def test_corrupt_png(gt_layout, decoder, monkeypatch):
    """Both PNG decoders (libspng when pyspng is installed, OpenCV without it) name the file."""
    from operators.formats import panoptic

    if decoder == "opencv":
        monkeypatch.setattr(panoptic, "pyspng", None)
    json_uri, png_dir, images = gt_layout
    png = os.path.join(png_dir, f"{images[0].id}_gtFine_panoptic.png")
    data = open(png, "rb").read()
    open(png, "wb").write(data[: len(data) // 2])  # truncated
    gt = read_ground_truth(json_uri, png_dir)
    with expect(CorruptFileError, png, "cannot decode PNG"):
        gt.read_frame(gt.images[0])
    open(png, "wb").write(data[:-12])  # the image data complete, IEND missing
    with expect(CorruptFileError, png, "cannot decode PNG"):
        read_panoptic_png(png)
    crc = data.index(b"IDAT") + 4 + int.from_bytes(data[data.index(b"IDAT") - 4:data.index(b"IDAT")], "big")
    open(png, "wb").write(data[:crc] + bytes([data[crc] ^ 0xFF]) + data[crc + 1:])  # pixels intact, IDAT CRC wrong
    with expect(CorruptFileError, png, "cannot decode PNG"):
        read_panoptic_png(png)
    open(png, "wb").write(b"not a png at all")
    with expect(CorruptFileError, png, "cannot decode PNG"):
        read_panoptic_png(png)


def test_segments_disagree_with_png(gt_layout):
    json_uri, png_dir, images = gt_layout
    png = os.path.join(png_dir, f"{images[0].id}_gtFine_panoptic.png")

    def drop_car(doc):
        doc["annotations"][0]["segments_info"] = [s for s in doc["annotations"][0]["segments_info"]
                                                  if s["id"] != 14_001]
    _edit_json(json_uri, drop_car)
    gt = read_ground_truth(json_uri, png_dir)
    with expect(FormatMismatchError, png, r"\[14001\] are in the PNG but not in segments_info"):
        gt.read_frame(gt.images[0])

    def add_ghost(doc):
        doc["annotations"][1]["segments_info"].append({"id": 99, "category_id": 13, "area": 1,
                                                       "bbox": [0, 0, 1, 1], "iscrowd": 0})
    _edit_json(json_uri, add_ghost)
    gt = read_ground_truth(json_uri, png_dir)
    with expect(FormatMismatchError, os.path.join(png_dir, f"{images[1].id}_gtFine_panoptic.png"),
                r"\[99\] are in segments_info but not in the PNG"):
        gt.read_frame(gt.images[1])


def test_unknown_category(gt_layout):
    json_uri, png_dir, images = gt_layout
    _edit_json(json_uri, lambda doc: doc["annotations"][0]["segments_info"][0].update(category_id=42))
    gt = read_ground_truth(json_uri, png_dir)
    with expect(FormatMismatchError, f"{images[0].id}_gtFine_panoptic.png", r"unknown category ids \[42\]"):
        gt.read_frame(gt.images[0])


def test_frame_of_the_wrong_size(gt_layout):
    json_uri, png_dir, images = gt_layout
    _edit_json(json_uri, lambda doc: doc["images"][1].update(width=W + 8))
    gt = read_ground_truth(json_uri, png_dir)
    with expect(FormatMismatchError, f"{images[1].id}_gtFine_panoptic.png", rf"{W}x{H} \(WxH\) differs from the "
                                                                            rf"expected {W + 8}x{H}"):
        gt.read_frame(gt.images[1])


def test_invalid_json(gt_layout, tmp_path):
    json_uri, png_dir, _ = gt_layout
    open(json_uri, "w").write('{"images": [')
    with expect(CorruptFileError, json_uri, "invalid JSON"):
        read_ground_truth(json_uri, png_dir)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    (pred_dir / "pred.json").write_bytes(b"\xff\xfe garbage")
    with expect(CorruptFileError, f"{pred_dir}/pred.json", "invalid JSON"):
        read_predictions(str(pred_dir))


def test_json_without_the_layout_keys(gt_layout):
    json_uri, png_dir, _ = gt_layout
    _edit_json(json_uri, lambda doc: doc.pop("categories"))
    with expect(FormatMismatchError, json_uri, "missing top-level key 'categories'"):
        read_ground_truth(json_uri, png_dir)


def test_image_without_video_identity(gt_layout):
    json_uri, png_dir, _ = gt_layout

    def anonymous(doc):
        doc["images"][0] = {"id": "frame_a", "file_name": "frame_a.png", "width": W, "height": H}
    _edit_json(json_uri, anonymous)
    with expect(FormatMismatchError, json_uri, "'frame_a' has no video_id/frame_index"):
        read_ground_truth(json_uri, png_dir)


def test_json_that_is_not_an_object(gt_layout):
    json_uri, png_dir, _ = gt_layout
    open(json_uri, "w").write("[1, 2, 3]")
    with expect(FormatMismatchError, json_uri, "expected a JSON object at the top level, got list"):
        read_ground_truth(json_uri, png_dir)


def test_malformed_image_and_category_records(gt_layout):
    json_uri, png_dir, _ = gt_layout
    original = open(json_uri).read()
    _edit_json(json_uri, lambda doc: doc["images"][0].pop("id"))
    with expect(FormatMismatchError, json_uri, "malformed image record"):
        read_ground_truth(json_uri, png_dir)
    open(json_uri, "w").write(original)
    _edit_json(json_uri, lambda doc: doc["categories"][3].pop("id"))
    with expect(FormatMismatchError, json_uri, "malformed category record"):
        read_ground_truth(json_uri, png_dir)


def test_ground_truth_without_image_sizes_is_read(gt_layout):
    """width/height are optional in images[]: without them there is no size to check
    (regression: the reader compared every frame with 0x0)."""
    json_uri, png_dir, _ = gt_layout

    def drop_sizes(doc):
        for rec in doc["images"]:
            del rec["width"], rec["height"]
    _edit_json(json_uri, drop_sizes)
    gt = read_ground_truth(json_uri, png_dir)
    np.testing.assert_array_equal(gt.read_frame(gt.images[0]).ids, make_frame().ids)


def test_missing_files(gt_layout, tmp_path):
    json_uri, png_dir, images = gt_layout
    png = os.path.join(png_dir, f"{images[0].id}_gtFine_panoptic.png")
    os.remove(png)
    gt = read_ground_truth(json_uri, png_dir)
    with expect(CorruptFileError, png, "file not found"):
        gt.read_frame(gt.images[0])
    with expect(CorruptFileError, str(tmp_path / "nope.json"), "file not found"):
        read_ground_truth(str(tmp_path / "nope.json"), png_dir)
    with expect(CorruptFileError, f"{tmp_path}/pred/pred.json", "file not found"):
        read_predictions(str(tmp_path / "pred"))
    with expect(CorruptFileError, str(tmp_path / "f.flo"), "file not found"):
        read_flo(str(tmp_path / "f.flo"))


def test_unreadable_files(gt_layout, tmp_path):
    """A path that exists but is not a readable file: our error naming it, not an OSError."""
    json_uri, png_dir, images = gt_layout
    png = os.path.join(png_dir, f"{images[0].id}_gtFine_panoptic.png")
    os.remove(png)
    os.mkdir(png)
    with expect(CorruptFileError, png, "cannot read the file"):
        read_ground_truth(json_uri, png_dir).read_frame(images[0])
    with expect(CorruptFileError, str(tmp_path), "cannot read the file"):
        read_ground_truth(str(tmp_path), png_dir)
    with expect(CorruptFileError, str(tmp_path), "cannot read the file"):
        read_flo(str(tmp_path))


def test_prediction_disagrees_with_its_png(tmp_path):
    image = _images("0000", 1)[0]
    frame = make_frame()
    wrong = PanopticFrame(frame.ids, frame.segments[:-1])
    with PredictionWriter(str(tmp_path)) as writer:
        writer.add(image.id, wrong)
    predictions = read_predictions(str(tmp_path))
    with expect(FormatMismatchError, f"pan_pred/{image.id}.png", "in the PNG but not in segments_info"):
        predictions.read_frame(image)
    with expect(InputError, "video 0000 frame 5", "no prediction"):
        predictions.read_frame(VpsImage("other", "other.png", W, H, "0000", 5))


def test_malformed_segment_record(gt_layout):
    json_uri, png_dir, _ = gt_layout
    _edit_json(json_uri, lambda doc: doc["annotations"][0]["segments_info"][0].pop("category_id"))
    with expect(FormatMismatchError, json_uri, "malformed segment record"):
        read_ground_truth(json_uri, png_dir)


@pytest.mark.parametrize("edit,problem", [
    (lambda doc: doc.update(annotations={"a": 1}), "'annotations' must be a list"),
    (lambda doc: doc["annotations"].__setitem__(0, [1, 2]), "malformed annotation record"),
    (lambda doc: doc["annotations"][0].update(segments_info=7), "malformed annotation record"),
    (lambda doc: doc["annotations"][0]["segments_info"].__setitem__(0, "car"), "malformed segment record"),
    (lambda doc: doc["annotations"].append(dict(doc["annotations"][0])), "two annotations for image"),
])
def test_malformed_annotation_records(gt_layout, edit, problem):
    json_uri, png_dir, _ = gt_layout
    _edit_json(json_uri, edit)
    with expect(FormatMismatchError, json_uri, problem):
        read_ground_truth(json_uri, png_dir)


def test_corrupt_flo(tmp_path):
    uri = str(tmp_path / "f.flo")
    write_flo(uri, np.zeros((H, W, 2), np.float32))
    data = open(uri, "rb").read()
    open(uri, "wb").write(data[:-8])
    with expect(CorruptFileError, uri, rf".flo header says {W}x{H}"):
        read_flo(uri)
    open(uri, "wb").write(b"PIEX" + data[4:])  # the magic is "PIEH" read as float32
    with expect(CorruptFileError, uri, "bad magic number"):
        read_flo(uri)


# -- bad input: videos ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory):
    """Bytes of a valid 20-frame video per container: {".mp4": …, ".avi": …, ".mkv": …}."""
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(20)]
    out = {}
    for ext, fourcc in ((".mp4", "mp4v"), (".avi", "MJPG"), (".mkv", "mp4v")):
        path = str(tmp_path_factory.mktemp("bad-video") / f"good{ext}")
        with VideoWriter(path, 10.0, fourcc=fourcc) as writer:
            writer.write_all(frames)
        out[ext] = open(path, "rb").read()
    return out


@pytest.mark.parametrize("ext,keep,problem", [
    (".mp4", 0.5, "cannot open it as a video"),  # the mp4 index (moov) is at the end: cut, it does not open
    (".mp4", 0.97, "cannot open it as a video"),
    (".avi", 0.6, r"header promises 20 frames but only \d+ decode"),  # avi and mkv decode up to the cut
    (".mkv", 0.97, r"header promises 20 frames but only 19 decode"),
])
def test_truncated_video(tmp_path, video_bytes, ext, keep, problem):
    uri = str(tmp_path / f"cut{ext}")
    data = video_bytes[ext]
    open(uri, "wb").write(data[: int(len(data) * keep)])
    with expect(CorruptFileError, uri, f"{problem}.*truncated"):
        open_video(uri)


def test_truncated_video_can_be_decoded_up_to_the_cut_when_asked(tmp_path, video_bytes):
    uri = str(tmp_path / "cut.avi")
    data = video_bytes[".avi"]
    open(uri, "wb").write(data[: int(len(data) * 0.6)])
    with ContainerSource(uri, strict=False) as source:
        assert 0 < source.meta.frame_count < source.header_frame_count == 20
        assert source.read(0, source.meta.frame_count).shape == (source.meta.frame_count, 32, 48, 3)


def test_not_a_video(tmp_path):
    uri = str(tmp_path / "notes.mp4")
    open(uri, "w").write("these are notes, not a video\n" * 50)
    with expect(CorruptFileError, uri, "cannot open it as a video"):
        open_video(uri)
    other = str(tmp_path / "notes.txt")
    open(other, "w").write("hello")
    with expect(FormatMismatchError, other, "not a video"):
        open_video(other)
    with expect(CorruptFileError, str(tmp_path / "missing.mp4"), "file not found"):
        open_video(str(tmp_path / "missing.mp4"))


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no frames here")
    with expect(FormatMismatchError, str(tmp_path / "empty"), "holds no frames"):
        open_video(str(tmp_path / "empty"))


def _sequence(directory, frames) -> None:
    os.makedirs(directory, exist_ok=True)
    for t, rgb in enumerate(frames):
        cv2.imwrite(os.path.join(directory, f"{t:04d}.png"), rgb)


def test_image_sequence_with_a_frame_of_another_size(tmp_path):
    frames = [np.full((H, W, 3), t, np.uint8) for t in range(4)]
    frames[2] = np.zeros((H, W + 2, 3), np.uint8)
    _sequence(tmp_path / "seq", frames)
    with open_video(str(tmp_path / "seq")) as source:
        np.testing.assert_array_equal(source.read(0, 2)[:, 0, 0, 0], [0, 1])  # frames before it still read
        with expect(FormatMismatchError, str(tmp_path / "seq" / "0002.png"), rf"frame 2 is {W + 2}x{H}"):
            source.read(0, 4)


def test_image_sequence_with_a_corrupt_image(tmp_path):
    _sequence(tmp_path / "seq", [np.zeros((H, W, 3), np.uint8)] * 3)
    bad = tmp_path / "seq" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:30])
    with open_video(str(tmp_path / "seq")) as source:
        with expect(CorruptFileError, str(bad), "cannot decode image"):
            source.read(0, 3)
    (tmp_path / "seq" / "0000.png").write_bytes(b"")  # the first frame, read at open
    with expect(CorruptFileError, str(tmp_path / "seq" / "0000.png"), "cannot decode image"):
        open_video(str(tmp_path / "seq"))
