"""The motion model (operators/association/motion.py) alone, then in the tracker: gating of
look-alikes, exits, class flips, re-identification after a run of misses, checkpoints."""
import numpy as np
import pytest

from association_scenes import CAR, PERSON, Box, identity_switches, render, scrambled_video
from operators.association import TrackerConfig, TrackState, VideoTracker, motion
from operators.association.config import TrackerConfig as Config

NOISE = motion.MotionNoise()
TRUCK = 14


def test_constant_velocity_prediction_and_growing_uncertainty():
    state = motion.initiate(np.array([10.0, 20.0, 8.0]), NOISE)
    for t in range(1, 4):
        state = motion.update(motion.predict(state, NOISE), np.array([10.0 + 4 * t, 20.0 - 2 * t, 8.0]), NOISE)
    assert abs(state.mean[3] - 4.0) < 1.0 and abs(state.mean[4] + 2.0) < 1.0
    one, five = motion.predict(state, NOISE, 1), motion.predict(state, NOISE, 5)
    assert abs(five.mean[0] - (state.mean[0] + 5 * state.mean[3])) < 1e-9
    assert np.trace(five.cov[:2, :2]) > 4 * np.trace(one.cov[:2, :2])  # uncertainty grows with time lost


def test_observation_centric_reupdate_takes_the_velocity_of_the_gap():
    state = motion.initiate(np.array([0.0, 0.0, 10.0]), NOISE)
    coasted = motion.predict(state, NOISE, 6)                 # at rest: the coasting velocity is 0
    found = motion.reupdate_after_gap(coasted, np.array([30.0, 12.0, 10.0]), 6, NOISE)
    np.testing.assert_allclose(found.mean, [30.0, 12.0, 10.0, 5.0, 2.0, 0.0])
    np.testing.assert_allclose(found.anchor, [30.0, 12.0, 10.0])


def test_camera_motion_is_recovered_from_the_background_flow():
    height, width = 60, 100
    truth = np.array([[1.02, 0.0, 3.0], [0.0, 1.02, -2.0]])   # zoom and pan, previous → now
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    inverse = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
    prev_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    prev_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    flow = np.stack([prev_x - xs, prev_y - ys], axis=-1).astype(np.float32)
    labels = np.zeros((height, width), np.uint8)
    labels[20:40, 30:60] = 1                                   # a thing moving on its own
    flow[20:40, 30:60] = (9.0, 0.0)
    found = motion.camera_motion(flow, labels, np.array([True, False]))
    np.testing.assert_allclose(found, truth, atol=0.02)
    state = motion.initiate(np.array([50.0, 30.0, 10.0]), NOISE)
    moved = motion.apply_camera(state, found)
    np.testing.assert_allclose(moved.mean[:3], [1.02 * 50 + 3, 1.02 * 30 - 2, 10.2], atol=0.3)
    assert motion.apply_camera(state, None) is state


def test_outside_frame():
    state = motion.initiate(np.array([-8.0, 30.0, 10.0]), NOISE)
    assert motion.outside_frame(state, 60, 100, 0.5) and not motion.outside_frame(state, 60, 100, 1.0)
    assert not motion.outside_frame(motion.initiate(np.array([99.0, 59.0, 10.0]), NOISE), 60, 100)


def test_mahalanobis_prefers_the_predicted_position():
    state = motion.predict(motion.reupdate_after_gap(motion.initiate(np.array([0.0, 0.0, 10.0]), NOISE),
                                                     np.array([20.0, 0.0, 10.0]), 4, NOISE), NOISE)
    d2 = motion.mahalanobis_sq(state.mean[None], state.cov[None], np.array([[25.0, 0.0, 10.0], [15.0, 0.0, 10.0]]),
                               NOISE)
    assert d2.shape == (1, 2) and d2[0, 0] < d2[0, 1]
    assert np.all(motion.motion_affinity(d2) <= 1.0)


def test_a_collapsed_visible_size_costs_less_than_the_same_jump_in_position():
    """Partial occlusion shrinks the measured size at once; the filter trusts sizes less than
    centroids (``size_observation``), so a car half hidden still passes the gate."""
    z = np.array([50.0, 30.0, 40.0])
    state = motion.initiate(z, NOISE)
    for _ in range(5):  # a parked car, seen a few times: its velocity is known to be ~0
        state = motion.update(motion.predict(state, NOISE), z, NOISE)
    state = motion.predict(state, NOISE)
    shrunk, moved = np.array([[50.0, 30.0, 8.0]]), np.array([[82.0, 30.0, 40.0]])
    d2 = [motion.mahalanobis_sq(state.mean[None], state.cov[None], z, NOISE)[0, 0] for z in (shrunk, moved)]
    assert d2[0] < d2[1]
    strict = motion.MotionNoise(size_observation=NOISE.observation * NOISE.size_factor)
    assert motion.mahalanobis_sq(state.mean[None], state.cov[None], shrunk, strict)[0, 0] > d2[0]


# ---------------------------------------------------------------- in the tracker
def run(tracker, frames):
    return [tracker.update(f) for f, _, _ in frames]


def test_an_exit_retires_the_track_and_a_newcomer_elsewhere_gets_a_new_id():
    """A car drives out on the right; two frames later a car of the same look enters on the
    left. Without the exit rule, memory offers the old id to the newcomer."""
    leaving = Box(14001, CAR, 60, 30, 12, 10, 8, 0, (200, 40, 40), hidden=frozenset(range(5, 12)))
    entering = Box(14002, CAR, -40, 30, 12, 10, 8, 0, (200, 40, 40), hidden=frozenset(range(0, 6)))
    video = scrambled_video([leaving, entering], 10)
    gts = [gt for _, gt, _ in video]
    cfg = TrackerConfig(reid_motion_gate=1e9, reid_min_appearance=0.0, reid_threshold=0.0)
    tracker = VideoTracker("v", cfg)
    outputs = run(tracker, video)
    _, seen = identity_switches(outputs, gts)
    assert seen[14001].isdisjoint(seen[14002])
    assert min(seen[14001]) not in tracker.tracks          # retired, not lost
    never_exits = run(VideoTracker("v", Config(**{**cfg.__dict__, "exit_margin": -1.0})), video)
    _, seen = identity_switches(never_exits, gts)
    assert seen[14001] == seen[14002]                       # what the exit rule prevents


def test_a_one_frame_class_flip_neither_breaks_nor_mislabels_the_tube():
    car = Box(14001, CAR, 10, 30, 12, 10, 2, 0, (200, 40, 40), category_at={4: TRUCK})
    video = scrambled_video([car], 8)
    outputs = run(VideoTracker("v"), video)
    ids = {int(out.ids[gt.ids == 14001].max()) for out, (_, gt, _) in zip(outputs, video)}
    assert len(ids) == 1
    assert all(out.segment(min(ids)).category_id == CAR for out in outputs)
    split = run(VideoTracker("v", TrackerConfig(confusable_categories=())), video)
    assert len({int(out.ids[gt.ids == 14001].max()) for out, (_, gt, _) in zip(split, video)}) > 1


def test_a_truck_of_another_look_does_not_take_a_lost_cars_id():
    """A car is missed from frame 5 on; from frame 7 a truck of a darker red drives where the car
    would be. Car and truck are confusable (a segmenter flips them), but a flip keeps the
    object's look: re-identification (``confusable_min_appearance``) and, where it is switched
    on, the tracked stage on the car's carried mask (``confusable_min_appearance_tracked``)
    refuse the truck the car's id."""
    car = Box(14001, CAR, 10, 30, 12, 10, 3, 0, (200, 40, 40), hidden=frozenset(range(5, 12)))
    truck = Box(15001, TRUCK, 10, 30, 12, 10, 3, 0, (160, 60, 60), hidden=frozenset(range(0, 7)))
    video = scrambled_video([car, truck], 10)
    gts = [gt for _, gt, _ in video]

    def shared(**config):
        _, seen = identity_switches(run(VideoTracker("v", TrackerConfig(**config)), video), gts)
        return not seen[14001].isdisjoint(seen[15001])

    assert not shared(carry_lost_frames=0)                                   # re-identification
    assert shared(carry_lost_frames=0, confusable_min_appearance=0.0)
    assert shared()                                          # the carried mask: tracked stage, off by default
    assert not shared(confusable_min_appearance_tracked=0.9)


def test_run_of_misses_is_bridged_by_motion_between_look_alikes():
    """Two same-looking persons walk side by side; one is missed for 5 frames while both keep
    walking. The motion model's prediction gives the id back to the right one."""
    boxes = [Box(12001, PERSON, 10, 25, 6, 14, 3, 0, (30, 200, 30), hidden=frozenset(range(4, 9))),
             Box(12002, PERSON, 10, 45, 6, 14, 3, 0, (30, 200, 30))]
    video = scrambled_video(boxes, 14)
    outputs = run(VideoTracker("v", TrackerConfig(carry_lost_frames=0)), video)
    switches, seen = identity_switches(outputs, [gt for _, gt, _ in video])
    assert switches == 0 and len(seen[12001]) == 1 and seen[12001] != seen[12002]


def test_motion_and_class_votes_survive_a_checkpoint():
    car = Box(14001, CAR, 10, 30, 12, 10, 3, 0, (200, 40, 40), category_at={3: TRUCK}, hidden=frozenset({6, 7}))
    video = scrambled_video([car, Box(12001, PERSON, 70, 20, 6, 14, -2, 0, (30, 200, 30))], 12, seed=4)
    reference = run(VideoTracker("v"), video)
    first = VideoTracker("v")
    run(first, video[:7])
    meta, arrays = first.state()
    resumed = VideoTracker.from_state(meta, {k: v.copy() for k, v in arrays.items()})
    track = resumed.tracks[min(resumed.tracks)]
    assert track.motion is not None and track.class_votes and track.state is TrackState.LOST
    np.testing.assert_array_equal(track.motion.mean, first.tracks[track.track_id].motion.mean)
    for got, want in zip(run(resumed, video[7:]), reference[7:]):
        np.testing.assert_array_equal(got.ids, want.ids)
        assert got.segments == want.segments


def test_render_helper_still_gives_exact_flow():
    rgb, gt, flow = render([Box(14001, CAR, 10, 30, 12, 10, 3, 0, (200, 40, 40))], 2)
    assert (flow[gt.ids == 14001] == (-3, 0)).all()


@pytest.mark.parametrize("field, value", [("confusable_affinity", 1.5), ("class_memory", -0.1),
                                          ("motion_observation_std", 0.0), ("motion_weight", -1.0),
                                          ("confusable_min_appearance_tracked", -0.5), ("confusable_min_appearance", -1.0)])
def test_config_rejects_bad_motion_settings(field, value):
    with pytest.raises(ValueError):
        TrackerConfig(**{field: value})


def test_a_checkpoint_from_before_the_motion_model_resumes():
    """Checkpoints written before this change: config fields that were retired, tracks without
    motion state or class votes. They resume, the motion model starting from the last match."""
    import json

    video = scrambled_video([Box(14001, CAR, 10, 30, 12, 10, 3, 0, (200, 40, 40))], 8)
    tracker = VideoTracker("v")
    run(tracker, video[:4])
    meta, arrays = tracker.state()
    config = json.loads(meta["config"])
    config.update(reid_position_sigma=1.5, reid_min_size=4.0)
    meta = {**meta, "config": json.dumps(config),
            "tracks": [{k: v for k, v in t.items() if k not in ("motion", "class_votes")} for t in meta["tracks"]]}
    resumed = VideoTracker.from_state(meta, arrays)
    assert all(t.motion is None for t in resumed.tracks.values())
    outputs = run(resumed, video[4:])
    assert {int(o.ids[gt.ids == 14001].max()) for o, (_, gt, _) in zip(outputs, video[4:])} == {1000}
    with pytest.raises(ValueError, match="unknown"):
        TrackerConfig.from_json(json.dumps({**config, "no_such_knob": 1}))

