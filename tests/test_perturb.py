"""Predictions made from GT: scrambled ids keep the segmentation, noise changes it as configured."""
import numpy as np

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
