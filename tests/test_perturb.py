"""Predictions made from GT: scrambled ids keep the segmentation, noise changes it as configured."""
import numpy as np
import pytest

from operators.formats.panoptic import PanopticFrame, segments_from_ids, validate_frame
from operators.synth.perturb import NoiseConfig, perturb_frame, scramble_ids

THINGS = {11, 13}


def _frame() -> PanopticFrame:
    ids = np.zeros((40, 60), np.int32)
    ids[:20] = 1000            # stuff: road (category 0)
    ids[20:] = 11000           # stuff: sky (category 10)
    ids[5:15, 5:20] = 14001    # a car
    ids[25:35, 30:40] = 12001  # a person
    ids[30:38, 50:58] = 0      # VOID
    ids[2:6, 40:50] = 12002    # a crowd of persons
    cats = {1000: 0, 11000: 10, 14001: 13, 12001: 11, 12002: 11}
    return PanopticFrame(ids, segments_from_ids(ids, cats, iscrowd_of={12002: 1}))


def _partition(ids: np.ndarray) -> set[frozenset]:
    return {frozenset(np.flatnonzero(ids.ravel() == i).tolist()) for i in np.unique(ids) if i != 0}


def test_scramble_keeps_segmentation_and_categories_but_changes_ids():
    frame = _frame()
    out = scramble_ids(frame, np.random.default_rng(0))
    validate_frame(out, "scrambled")
    assert _partition(out.ids) == _partition(frame.ids)
    assert not {s.id for s in out.segments} & {s.id for s in frame.segments}
    for seg in out.segments:
        original = frame.ids[out.ids == seg.id][0]
        assert frame.segment(int(original)).category_id == seg.category_id
        assert 0.5 <= seg.score <= 1.0


def test_perturb_is_deterministic_and_valid():
    frame = _frame()
    a = perturb_frame(frame, np.random.default_rng(7), THINGS)
    b = perturb_frame(frame, np.random.default_rng(7), THINGS)
    np.testing.assert_array_equal(a.ids, b.ids)
    validate_frame(a, "perturbed")
    assert (a.ids[2:6, 40:50] == 0).all(), "crowd regions become VOID in predictions"


def test_perturb_noise_knobs_do_what_they_say():
    frame = _frame()
    dropped = perturb_frame(frame, np.random.default_rng(1), THINGS,
                            NoiseConfig(boundary_px=0, drop_prob=1.0, spurious_per_frame=0))
    assert (dropped.ids[5:15, 5:20] == 0).all() and (dropped.ids[25:35, 30:40] == 0).all()
    spurious = perturb_frame(frame, np.random.default_rng(1), THINGS,
                             NoiseConfig(boundary_px=0, drop_prob=0.0, spurious_per_frame=20))
    assert len(spurious.segments) > len(frame.segments) + 5
    clean = perturb_frame(frame, np.random.default_rng(1), THINGS,
                          NoiseConfig(boundary_px=0, drop_prob=0.0, spurious_per_frame=0))
    crowd_free = frame.ids.copy()
    crowd_free[crowd_free == 12002] = 0
    assert _partition(clean.ids) == _partition(crowd_free)


def test_runs_of_misses_follow_the_object_and_stay_within_their_length():
    from operators.synth.perturb import VideoPerturbation

    frame = _frame()
    noise = NoiseConfig(boundary_px=0, drop_prob=0.0, spurious_per_frame=0, miss_run_prob=0.3, miss_run_max=4)
    perturb = VideoPerturbation(np.random.default_rng(3), THINGS, noise)
    missed = [not (perturb(frame).ids[5:15, 5:20] != 0).all() for _ in range(200)]
    runs, length = [], 0
    for m in missed + [False]:
        if m:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    assert runs and max(runs) <= 4 and max(runs) > 1  # runs, not single drops, and never longer than asked
    again = VideoPerturbation(np.random.default_rng(3), THINGS, noise)
    assert [not (again(frame).ids[5:15, 5:20] != 0).all() for _ in range(200)] == missed


def test_class_flips_stay_within_confusable_groups():
    from operators.formats.categories import CONFUSABLE_THINGS

    frame = _frame()
    seen = set()
    rng = np.random.default_rng(5)
    for _ in range(60):
        out = perturb_frame(frame, rng, {11, 12, 13, 14, 15}, NoiseConfig(boundary_px=0, drop_prob=0.0,
                                                                          spurious_per_frame=0, class_flip_prob=0.5))
        seen |= {(int(frame.ids[out.ids == s.id][0]), s.category_id) for s in out.segments}
    car_classes = {c for gt, c in seen if gt == 14001}
    person_classes = {c for gt, c in seen if gt == 12001}
    assert car_classes == {13, 14, 15} and person_classes == {11, 12}
    assert all(set(g) for g in CONFUSABLE_THINGS)
    with pytest.raises(ValueError):
        NoiseConfig(class_flip_prob=1.5)


def test_speed_and_look_alikes_knobs_of_the_generator():
    from operators.synth import SynthConfig, generate_video

    def thing_motion(**kw):
        cfg = SynthConfig(videos=1, frames=4, height=64, width=128, seed=2, crowd=False, void=False, **kw)
        frames = list(generate_video(cfg, 0))
        moving = [np.abs(f.flow[f.panoptic.ids >= 12000]).mean() for f in frames[1:]]
        return float(np.mean(moving)), cfg

    slow, _ = thing_motion()
    fast, cfg = thing_motion(speed=3.0)
    assert fast > 1.5 * slow and cfg.motion_fps == pytest.approx(cfg.fps / 3)
    assert SynthConfig(look_alikes=True).knobs.same_appearance and not SynthConfig().knobs.same_appearance
    from operators.errors import InputError

    with pytest.raises(InputError, match="speed"):
        SynthConfig(speed=0)
