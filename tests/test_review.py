"""What reviewers look at: the labelled overlay (track ids, classes, legend, time), review MCAPs
merged per log, and the worst-first ranking of the report."""
from __future__ import annotations


import numpy as np
import pytest

from operators.formats.categories import CITYSCAPES_CATEGORIES
from operators.review.mcap import ReviewLogWriter, annotations_message, merge_review_logs
from operators.review.overlay import LabelledSegment, format_timestamp, legend_classes, render_overlay
from pipelines.commit import CommitMarker, OutputLayout
from pipelines.review import ReviewRow, rank_worst_first, write_review_report

H, W = 240, 320


def scene():
    rgb = np.full((H, W, 3), 90, np.uint8)
    ids = np.zeros((H, W), np.int32)
    ids[150:, :] = 1  # road (stuff id = category + 1)
    ids[100:160, 60:140] = 14001  # a car
    ids[90:200, 200:230] = 12001  # a person
    segments = [LabelledSegment(1, 0, (0, 150, W, 90), False), LabelledSegment(14001, 13, (60, 100, 80, 60), True),
                LabelledSegment(12001, 11, (200, 90, 30, 110), True)]
    return rgb, ids, segments


def _colours_by_sorting(ids: np.ndarray) -> np.ndarray:
    """The colours as :func:`colourise` first computed them: every id once (np.unique), then its colour."""
    from operators.review.overlay import track_colour

    present, inverse = np.unique(ids, return_inverse=True)
    palette = np.array([track_colour(int(i)) if i else (0, 0, 0) for i in present], np.uint8).reshape(-1, 3)
    return palette[inverse.reshape(ids.shape)]


@pytest.mark.parametrize("largest", [30, 70_000, 3_000_000, 2 ** 31 - 1])  # a lookup table below 2^21, sorting above
def test_colourise_gives_every_id_its_colour_whatever_the_ids(largest):
    from operators.review.overlay import colourise

    ids = np.random.default_rng(largest).integers(0, largest, (48, 64)).astype(np.int32)
    ids[:4] = 0
    assert np.array_equal(colourise(ids), _colours_by_sorting(ids))


def test_the_default_blend_is_the_float_formula_exactly():
    rgb, ids, _ = scene()
    rgb = np.random.default_rng(0).integers(0, 256, rgb.shape).astype(np.uint8)
    painted, out = _colours_by_sorting(ids).astype(np.float32), rgb.astype(np.float32)
    out[ids != 0] = 0.5 * out[ids != 0] + 0.5 * painted[ids != 0]
    edges = np.zeros(ids.shape, bool)
    edges[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edges[1:, :] |= ids[1:, :] != ids[:-1, :]
    out[edges] = 0
    assert np.array_equal(render_overlay(rgb, ids), out.astype(np.uint8))


def test_overlay_labels_things_draws_a_legend_and_the_time():
    rgb, ids, segments = scene()
    plain = render_overlay(rgb, ids)
    legend = legend_classes(segments)
    labelled = render_overlay(rgb, ids, segments, timestamp_ns=1_700_000_000_123_000_000, legend=legend)
    # a label inside the car's box (the person's box is too narrow for one: it keeps its box)
    x, y = segments[1].bbox[:2]
    assert np.any(labelled[y + 2:y + 12, x + 2:x + 40] != plain[y + 2:y + 12, x + 2:x + 40])
    x, y, w, h = segments[2].bbox
    inner = (slice(y + 2, y + h - 2), slice(x + 2, x + w - 2))
    np.testing.assert_array_equal(labelled[inner], plain[inner])
    # the legend below the frame: one swatch per class, in the class colour, hiding none of the scene
    assert [c.name for c in legend] == ["road", "person", "car"]
    assert labelled.shape[0] > H and labelled.shape[1] == W
    strip = labelled[H:]
    colours = {tuple(int(v) for v in strip[y, x]) for y in range(strip.shape[0]) for x in range(W)}
    assert {CITYSCAPES_CATEGORIES[0].color, CITYSCAPES_CATEGORIES[11].color, CITYSCAPES_CATEGORIES[13].color} <= colours
    # away from the labels and the time, the frame is the plain overlay
    np.testing.assert_array_equal(labelled[H - 30:H, 240:], plain[H - 30:H, 240:])
    # the time, top left
    assert np.any(labelled[4:16, 4:120] != plain[4:16, 4:120])
    assert format_timestamp(1_700_000_000_123_000_000) == "2023-11-14 22:13:20.123 UTC"
    assert format_timestamp(2_500_000_000) == "t = 2.500 s"


def test_annotations_name_each_thing_by_track_id_and_class():
    _, _, segments = scene()
    message = annotations_message(segments + [LabelledSegment(17000, 11, (0, 0, 5, 5), True, True)], 42)
    assert [t["text"] for t in message["texts"]] == ["14001 car", "12001 person", "person (crowd)"]
    assert [p["points"][2] for p in message["points"]][:1] == [{"x": 140.0, "y": 160.0}]
    assert message["texts"][0]["timestamp"] == {"sec": 0, "nsec": 42}


def test_parts_merge_into_one_log_in_log_time_order(tmp_path):
    from mcap.reader import make_reader

    rgb, ids, segments = scene()
    for name, topic, times in (("a", "/front", [10, 30, 50]), ("b", "/rear", [20, 40])):
        with ReviewLogWriter(str(tmp_path / f"{name}.mcap")) as writer:
            for t in times:
                writer.add_frame(topic, ids, segments, stamp_ns=t - 5, log_time_ns=t)
    assert merge_review_logs([str(tmp_path / "a.mcap"), str(tmp_path / "b.mcap")], str(tmp_path / "log.mcap")) == 10
    with open(tmp_path / "log.mcap", "rb") as f:
        messages = [(c.topic, m.log_time, s.name) for s, c, m in make_reader(f).iter_messages(log_time_order=False)]
    assert [t for _, t, _ in messages] == sorted(t for _, t, _ in messages)
    assert {(topic, schema) for topic, _, schema in messages} == {
        ("/front/panoptic", "foxglove.CompressedImage"), ("/front/panoptic/annotations", "foxglove.ImageAnnotations"),
        ("/rear/panoptic", "foxglove.CompressedImage"), ("/rear/panoptic/annotations", "foxglove.ImageAnnotations")}


def test_worst_first_by_vpq_with_gt_else_by_new_ids_per_100_frames(tmp_path):
    rows = [ReviewRow("calm", 200, 4, None, None), ReviewRow("jumpy", 50, 30, None, None),
            ReviewRow("mid", 100, 10, None, None)]
    assert [r.video_id for r in rank_worst_first(rows)] == ["jumpy", "mid", "calm"]  # 60, 10, 2 per 100 frames
    scored = [ReviewRow("a", 10, 1, 0.7, None), ReviewRow("b", 10, 1, 0.4, None), ReviewRow("c", 10, 1, None, None)]
    assert [r.video_id for r in rank_worst_first(scored)] == ["b", "a", "c"]
    layout = OutputLayout(str(tmp_path))
    markers = {r.video_id: CommitMarker(r.video_id, "f", "h", {}, {"frames": r.frames, "tracks": r.tracks},
                                        ["thumbnails/jumpy.jpg"] if r.video_id == "jumpy" else [], "run")
               for r in rows}
    page = open(write_review_report(layout, {}, markers=markers)).read()
    assert page.index("jumpy") < page.index(">mid<") < page.index("calm")
    assert "new track ids per 100 frames" in page and "../thumbnails/jumpy.jpg" in page


@pytest.mark.parametrize("bad", ["avi", "json"])
def test_review_is_only_mcap(bad):
    from pipelines.label.config import LabelConfig

    with pytest.raises(ValueError, match="unknown review format"):
        LabelConfig(review=bad)
