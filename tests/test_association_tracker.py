"""VideoTracker on hand-made scenes: identities, gates, memory, ids, bad input, checkpoints."""
import dataclasses

import numpy as np
import pytest

from association_scenes import CAR, PERSON, RIDER, ROAD, SKY, Box, identity_switches, render, scramble, scrambled_video
from operators.association import TrackerConfig, TrackerFrame, TrackState, VideoTracker
from operators.errors import FormatMismatchError, InputError
from operators.formats.panoptic import PanopticFrame, validate_frame


def crossing_boxes():
    """Two same-looking cars crossing paths, a person, and a car that leaves the frame."""
    return [Box(14001, CAR, 5, 30, 14, 10, 3, 0, (200, 30, 30)),
            Box(14002, CAR, 75, 36, 14, 10, -3, 0, (200, 30, 30)),
            Box(12001, PERSON, 40, 20, 6, 14, 0, 1, (30, 200, 30)),
            Box(14003, CAR, 80, 50, 10, 8, 2, 0, (30, 30, 200))]


def run(tracker, frames):
    return [tracker.update(f) for f, _, _ in frames]


@pytest.mark.parametrize("assignment", ["hungarian", "mutual"])
def test_scrambled_ground_truth_keeps_every_identity(assignment):
    video = scrambled_video(crossing_boxes(), 20)
    outputs = run(VideoTracker("v", TrackerConfig(assignment=assignment)), video)
    switches, seen = identity_switches(outputs, [gt for _, gt, _ in video])
    assert switches == 0
    assert all(len(ids) == 1 for ids in seen.values())
    assert len({next(iter(ids)) for ids in seen.values()}) == len(seen)  # distinct objects, distinct ids
    for out in outputs:
        validate_frame(out, "output")


def test_pixel_only_and_instance_only_differ_where_they_should():
    """Same-looking cars that cross: appearance alone confuses them at some point, the pixel
    tracker (flow-warped masks) does not."""
    video = scrambled_video(crossing_boxes(), 20)
    gts = [gt for _, gt, _ in video]
    pixel = run(VideoTracker("v", TrackerConfig(instance_weight=0, max_lost_frames=0)), video)
    assert identity_switches(pixel, gts)[0] == 0
    instance = run(VideoTracker("v", TrackerConfig(pixel_weight=0, motion_weight=0, max_lost_frames=0)), video)
    assert identity_switches(instance, gts)[0] > 0
    # the motion model (Kalman on centroid and size) keeps the look-alikes apart without flow
    moving = run(VideoTracker("v", TrackerConfig(pixel_weight=0, max_lost_frames=0)), video)
    assert identity_switches(moving, gts)[0] == 0


def test_stuff_gets_category_ids_and_low_scores_are_dropped():
    boxes = [Box(12001, PERSON, 10, 30, 6, 10, 0, 0, (0, 200, 0), score=0.9),
             Box(14001, CAR, 50, 30, 10, 8, 0, 0, (200, 0, 0), score=0.1)]
    frame, _, _ = scrambled_video(boxes, 1)[0]
    out = VideoTracker("v", TrackerConfig(thing_score_threshold=0.3)).update(frame)
    by_cat = {s.category_id: s for s in out.segments}
    assert by_cat[ROAD].id == ROAD + 1 and by_cat[SKY].id == SKY + 1
    assert CAR not in by_cat                      # below the score threshold → VOID
    assert by_cat[PERSON].id == 1000 and by_cat[PERSON].score == pytest.approx(0.9)
    assert (out.ids == 0).sum() == 80             # the dropped car's pixels
    validate_frame(out, "output")


def test_first_frame_ids_follow_score():
    boxes = [Box(12000 + k, PERSON, 5 + 12 * k, 30, 6, 10, 0, 0, (40 * k, 200, 0), score=s)
             for k, s in enumerate([0.5, 0.95, 0.7, 0.8])]
    frame, gt, to_gt = scrambled_video(boxes, 1)[0]
    out = VideoTracker("v").update(frame)
    by_score = sorted(boxes, key=lambda b: -b.score)
    assert [int(out.ids[gt.ids == b.gt_id].max()) for b in by_score] == [1000, 1001, 1002, 1003]


def test_occluded_object_is_reidentified_by_the_memory():
    boxes = [Box(14001, CAR, 5, 30, 12, 10, 3, 0, (200, 40, 40), hidden=frozenset(range(6, 10))),
             Box(14002, CAR, 60, 10, 12, 10, 0, 0, (40, 40, 200))]
    video = scrambled_video(boxes, 16)
    gts = [gt for _, gt, _ in video]
    with_memory = run(VideoTracker("v", TrackerConfig(max_lost_frames=10)), video)
    _, seen = identity_switches(with_memory, gts)
    assert len(seen[14001]) == 1
    without = run(VideoTracker("v", TrackerConfig(max_lost_frames=0)), video)
    _, seen = identity_switches(without, gts)
    assert len(seen[14001]) == 2                   # a new id after the gap


def test_lost_tracks_are_removed_after_max_lost_frames():
    boxes = [Box(14001, CAR, 5, 30, 12, 10, 0, 0, (200, 40, 40), hidden=frozenset(range(3, 10)))]
    tracker = VideoTracker("v", TrackerConfig(max_lost_frames=4))
    states = []
    for frame, _, _ in scrambled_video(boxes, 10):
        tracker.update(frame)
        states.append(tracker.tracks[1000].state if 1000 in tracker.tracks else TrackState.REMOVED)
    assert states[:3] == [TrackState.TRACKED] * 3
    assert states[3:7] == [TrackState.LOST] * 4
    assert states[7:] == [TrackState.REMOVED] * 3


@pytest.mark.parametrize("confusable, expected_ids", [(((PERSON, RIDER),), 1), ((), 2)])
def test_confusable_categories_keep_the_identity(confusable, expected_ids):
    boxes = [Box(12001, PERSON, 20, 30, 8, 14, 1, 0, (0, 200, 0), category_at={t: RIDER for t in range(4, 8)})]
    video = scrambled_video(boxes, 8)
    outputs = run(VideoTracker("v", TrackerConfig(confusable_categories=confusable, max_lost_frames=0)), video)
    track_ids = {int(out.ids[gt.ids == 12001].max()) for out, (_, gt, _) in zip(outputs, video)}
    assert len(track_ids) == expected_ids
    assert outputs[-1].segment(max(track_ids)).category_id == RIDER


def test_embeddings_drive_the_instance_tracker():
    """Two objects that swap places every frame: only embeddings can follow them."""
    rng = np.random.default_rng(0)
    codes = {12001: np.array([1.0, 0, 0]), 12002: np.array([0, 1.0, 0])}
    tracker = VideoTracker("v", TrackerConfig(pixel_weight=0, instance_weight=1, motion_weight=0, max_lost_frames=0))
    owner = {}
    for t in range(6):
        left, right = (12001, 12002) if t % 2 == 0 else (12002, 12001)
        boxes = [Box(left, PERSON, 10, 30, 8, 12, 0, 0, (0, 200, 0)), Box(right, PERSON, 70, 30, 8, 12, 0, 0, (0, 200, 0))]
        _, gt, _ = render(boxes, t)
        pred, to_gt = scramble(gt, rng)
        emb = {pid: codes[g] + 0.05 * rng.normal(size=3) for pid, g in to_gt.items() if g in codes}
        out = tracker.update(TrackerFrame(t, pred, None, None, emb))
        for g in codes:
            owner.setdefault(g, set()).add(int(out.ids[gt.ids == g].max()))
    assert len(owner[12001]) == 1 and len(owner[12002]) == 1 and owner[12001] != owner[12002]


def test_deterministic():
    video = scrambled_video(crossing_boxes(), 12, seed=5)
    a = run(VideoTracker("v"), video)
    b = run(VideoTracker("v"), video)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.ids, y.ids)
        assert x.segments == y.segments


# ---------------------------------------------------------------- bad input
def bad_frames(frame: TrackerFrame):
    """(description, bad variant of ``frame``, expected exception type)."""
    h, w = frame.panoptic.ids.shape
    ids = frame.panoptic.ids
    small = PanopticFrame(ids[:-2], frame.panoptic.segments)
    empty = PanopticFrame(ids, frame.panoptic.segments + [dataclasses.replace(frame.panoptic.segments[0], id=4242)])
    unknown = PanopticFrame(np.where(ids == frame.panoptic.segments[0].id, 77, ids).astype(np.int32),
                            frame.panoptic.segments)
    # ids past the largest listed id and negative ids fall off the end / start of the compact
    # index's table (np.take with mode="clip"): still named, still rejected
    huge = PanopticFrame(np.where(ids == frame.panoptic.segments[0].id, 10 ** 9, ids).astype(np.int32),
                         frame.panoptic.segments)
    negative = PanopticFrame(np.where(ids == frame.panoptic.segments[0].id, -3, ids).astype(np.int32),
                             frame.panoptic.segments)
    return [("huge id", dataclasses.replace(frame, panoptic=huge), FormatMismatchError,
             "ids [1000000000] are in the id map but not in segments_info"),
            ("negative id", dataclasses.replace(frame, panoptic=negative), FormatMismatchError, "negative id -3"),
            ("size", dataclasses.replace(frame, panoptic=small, rgb=frame.rgb[:-2], flow=frame.flow[:-2]),
             FormatMismatchError, "differs from the video"),
            ("flow", dataclasses.replace(frame, flow=np.zeros((h, w + 1, 2), np.float32)), FormatMismatchError, "flow"),
            ("empty mask", dataclasses.replace(frame, panoptic=empty), FormatMismatchError, "empty mask"),
            ("unknown id", dataclasses.replace(frame, panoptic=unknown), FormatMismatchError, "not in segments_info")]


def test_bad_frames_are_rejected_without_corrupting_the_state():
    video = scrambled_video(crossing_boxes(), 6, seed=1)
    reference = run(VideoTracker("v"), video)
    for name, bad, exc_type, message in bad_frames(video[3][0]):
        tracker = VideoTracker("cam7")
        outputs = [tracker.update(f) for f, _, _ in video[:3]]
        with pytest.raises(exc_type) as info:
            tracker.update(bad)
        assert "video cam7 frame 3" in str(info.value) and message in str(info.value), name
        outputs += [tracker.update(f) for f, _, _ in video[3:]]
        for got, want in zip(outputs, reference):
            np.testing.assert_array_equal(got.ids, want.ids, err_msg=name)
            assert got.segments == want.segments, name


@pytest.mark.parametrize("index, word", [(2, "repeats"), (1, "goes backwards")])
def test_frame_index_must_increase(index, word):
    video = scrambled_video(crossing_boxes(), 4, seed=1)
    tracker = VideoTracker("cam7")
    for f, _, _ in video[:3]:
        tracker.update(f)
    with pytest.raises(InputError, match=f"video cam7 frame {index}: frame index {word}"):
        tracker.update(dataclasses.replace(video[3][0], frame_index=index))
    reference = run(VideoTracker("cam7"), video)
    np.testing.assert_array_equal(tracker.update(video[3][0]).ids, reference[3].ids)


def test_state_round_trip_gives_identical_output():
    video = scrambled_video(crossing_boxes(), 12, seed=2)
    reference = run(VideoTracker("v"), video)
    first = VideoTracker("v")
    run(first, video[:6])
    meta, arrays = first.state()
    resumed = VideoTracker.from_state(meta, {k: v.copy() for k, v in arrays.items()})
    for got, want in zip(run(resumed, video[6:]), reference[6:]):
        np.testing.assert_array_equal(got.ids, want.ids)
        assert got.segments == want.segments


def test_config_rejects_nonsense_and_round_trips():
    with pytest.raises(ValueError):
        TrackerConfig(assignment="greedy")
    with pytest.raises(ValueError):
        TrackerConfig(pixel_weight=0, instance_weight=0)
    cfg = TrackerConfig(confusable_categories=((11, 12),), max_lost_frames=3)
    assert TrackerConfig.from_json(cfg.to_json()) == cfg


def test_frames_from_overlapping_masks():
    masks = np.zeros((3, 10, 12), bool)
    masks[0, 2:8, 2:8] = True      # score 0.5, partly under segment 1
    masks[1, 4:9, 5:11] = True     # score 0.9: wins the overlap
    masks[2, 5:7, 6:8] = True      # score 0.3, entirely under segment 1 → left out
    frame = TrackerFrame.from_masks(0, masks, [CAR, CAR, PERSON], [0.5, 0.9, 0.3], rgb=np.zeros((10, 12, 3), np.uint8))
    assert [s.id for s in frame.panoptic.segments] == [1, 2]
    assert (frame.panoptic.ids == 2).sum() == masks[1].sum()
    validate_frame(frame.panoptic, "masks")
    out = VideoTracker("v").update(frame)
    assert sorted(s.id for s in out.segments) == [1000, 1001]
    with pytest.raises(ValueError, match="empty"):
        TrackerFrame.from_masks(0, np.zeros((1, 4, 4), bool), [CAR])


@pytest.mark.parametrize("carry, expected_ids", [(2, 1), (0, 2)])
def test_a_missed_detection_is_bridged_by_the_carried_mask(carry, expected_ids):
    """Re-identification off (threshold above any score): only the lost track's mask, carried
    along the flow, lets the pixel tracker take the car up again after a one-frame miss."""
    boxes = [Box(14001, CAR, 5, 30, 12, 10, 2, 0, (200, 40, 40), hidden=frozenset({4}))]
    video = scrambled_video(boxes, 8)
    for t in (4, 5):  # flow is given for the frames after the miss, as a flow estimator would
        _, _, flow = render([dataclasses.replace(boxes[0], hidden=frozenset())], t)
        video[t] = (dataclasses.replace(video[t][0], flow=flow), video[t][1], video[t][2])
    cfg = TrackerConfig(max_lost_frames=5, carry_lost_frames=carry, reid_threshold=1.01)
    outputs = run(VideoTracker("v", cfg), video)
    _, seen = identity_switches(outputs, [gt for _, gt, _ in video])
    assert len(seen[14001]) == expected_ids


def _spurious_scene():
    """A car crossing the frame, a 3×3 blob in frame 5 only (a segmenter's spurious segment), and a
    small person that appears in frame 5 and stays."""
    every = frozenset(range(12))
    return [Box(14001, CAR, 5, 30, 14, 10, 3, 0, (200, 40, 40)),
            Box(14002, CAR, 60, 45, 3, 3, 0, 0, (90, 90, 90), hidden=every - {5}),
            Box(12001, PERSON, 40, 10, 3, 4, 0, 0, (30, 200, 30), hidden=frozenset(range(5)))]


@pytest.mark.parametrize("tentative", [0.0, 0.003])
def test_small_newcomers_are_tentative_until_the_next_frame_confirms_them(tentative):
    """``tentative_max_area``: a small segment no track takes is not output in its first frame;
    a one-frame blob never becomes a track, a small object that stays gets its id from its second
    frame on. Off, the blob is a track of one frame."""
    video = scrambled_video(_spurious_scene(), 12)
    tracker = VideoTracker("v", TrackerConfig(tentative_max_area=tentative))
    outputs = []
    for t, (frame, gt, _) in enumerate(video):
        outputs.append(tracker.update(frame))
        if t == 5:
            meta, arrays = tracker.state()  # a tentative track survives a checkpoint
            assert [tr.state for tr in tracker.tracks.values()].count(TrackState.TENTATIVE) == (2 if tentative else 0)
            tracker = VideoTracker.from_state(meta, {k: v.copy() for k, v in arrays.items()})
    blob = video[5][1].ids == 14002
    person = [gt.ids == 12001 for _, gt, _ in video]
    if tentative:
        assert (outputs[5].ids[blob] == 0).all() and (outputs[5].ids[person[5]] == 0).all()
        assert len({t.track_id for t in tracker.tracks.values()}) == 2   # the car and the person, no blob
    else:
        assert (outputs[5].ids[blob] >= 1000).all() and (outputs[5].ids[person[5]] >= 1000).all()
    person_ids = {int(np.unique(out.ids[m])[0]) for out, m in zip(outputs[6:], person[6:])}
    assert len(person_ids) == 1 and min(person_ids) >= 1000
    switches, seen = identity_switches(outputs, [gt for _, gt, _ in video])
    assert switches == 0 and len(seen[14001]) == 1
    # the video's first frame has no tentative tracks: every object there is new
    first = VideoTracker("v", TrackerConfig(tentative_max_area=1.0)).update(video[6][0])
    assert (first.ids[person[6]] >= 1000).all()
