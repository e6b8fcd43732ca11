"""Pure parts of the association: affinities, assignment, appearance model, descriptors —
each against a hand-computed case or an independent slow reference."""
import numpy as np
import pytest
from scipy.stats import norm

from operators.association import affinity
from operators.association.appearance import GaussianAppearance, segment_statistics
from operators.association.assignment import assign


def random_index(rng, shape, k):
    return rng.integers(0, k + 1, size=shape).astype(np.uint16)


@pytest.mark.parametrize("measure", ["dice", "iou", "dice_coverage"])
def test_overlap_from_joint_histogram_equals_per_pair_masks(measure):
    rng = np.random.default_rng(0)
    prev, cur = random_index(rng, (40, 50), 7), random_index(rng, (40, 50), 5)
    prev[prev == 3] = 0  # an empty previous segment: its row must be 0, not NaN
    fast = affinity.overlap_matrix(affinity.joint_histogram(prev, cur, 7, 5), measure)
    slow = affinity.overlap_matrix_per_pair(prev, cur, 7, 5, measure)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    assert np.all(fast[2] == 0)


def test_joint_histogram_large_key_space_uses_wide_keys():
    rng = np.random.default_rng(1)
    prev, cur = random_index(rng, (30, 30), 300), random_index(rng, (30, 30), 300)
    joint = affinity.joint_histogram(prev, cur, 300, 300)
    assert joint.sum() == 900
    assert joint[prev[0, 0], cur[0, 0]] >= 1


def test_dice_hand_case():
    prev = np.zeros((4, 4), np.uint16)
    prev[:2, :2] = 1            # 4 px
    cur = np.zeros((4, 4), np.uint16)
    cur[:2, :1] = 1             # 2 px, both inside prev
    dice = affinity.overlap_matrix(affinity.joint_histogram(prev, cur, 1, 1), "dice")
    iou = affinity.overlap_matrix(affinity.joint_histogram(prev, cur, 1, 1), "iou")
    both = affinity.overlap_matrix(affinity.joint_histogram(prev, cur, 1, 1), "dice_coverage")
    assert dice[0, 0] == pytest.approx(2 * 2 / (4 + 2))
    assert iou[0, 0] == pytest.approx(2 / 4)
    assert both[0, 0] == pytest.approx(0.5 * (4 / 6 + 1.0))  # all of the current segment is covered
    with pytest.raises(ValueError):
        affinity.overlap_matrix(affinity.joint_histogram(prev, cur, 1, 1), "jaccardish")


@pytest.mark.parametrize("n", [3, 300])
def test_relabel_equals_take_for_both_index_dtypes(n):
    rng = np.random.default_rng(5)
    index = rng.integers(0, n + 1, size=(20, 30)).astype(affinity.index_dtype(n))
    table = rng.integers(0, 1 << 24, size=n + 1).astype(np.int32)
    np.testing.assert_array_equal(affinity.relabel(index, table), table[index])
    assert affinity.index_dtype(254) == np.uint8 and affinity.index_dtype(255) == np.uint16


def test_warp_moves_a_square_along_the_flow():
    prev = np.zeros((20, 30), np.uint16)
    prev[5:9, 4:8] = 2
    flow = np.zeros((20, 30, 2), np.float32)
    flow[..., 0], flow[..., 1] = -3.0, -2.0   # current pixel x came from x + (-3, -2): moved by (+3, +2)
    warped = affinity.warp_segments(prev, flow)
    expected = np.zeros_like(prev)
    expected[7:11, 7:11] = 2
    np.testing.assert_array_equal(warped, expected)
    assert affinity.warp_segments(prev, None) is prev


def test_warp_from_outside_the_frame_is_void():
    prev = np.ones((10, 10), np.uint16)
    flow = np.full((10, 10, 2), 100.0, np.float32)
    assert not affinity.warp_segments(prev, flow).any()


def test_cosine_similarity():
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_allclose(affinity.cosine_similarity(a, b), [[1, 1 / np.sqrt(2), -1], [0, 0, 0]])


def test_gaussian_log_likelihood_matches_scipy():
    rng = np.random.default_rng(2)
    x, mean, var = rng.normal(size=(4, 3)), rng.normal(size=(2, 3)), rng.uniform(0.1, 2, size=(2, 3))
    ref = np.array([[norm.logpdf(x[m], mean[n], np.sqrt(var[n])).sum() for m in range(4)] for n in range(2)])
    np.testing.assert_allclose(affinity.gaussian_log_likelihood(x, mean, var), ref, rtol=1e-12)
    aff = affinity.gaussian_affinity(np.vstack([mean, x]), mean, var)
    np.testing.assert_allclose(np.diagonal(aff[:, :2]), 1.0)  # a detection at the mean scores 1
    at_mode = np.array([norm.logpdf(mean[n], mean[n], np.sqrt(var[n])).sum() for n in range(2)])
    np.testing.assert_allclose(np.log(aff[:, 2:]), (ref - at_mode[:, None]) / 3, rtol=1e-10)


def test_category_gate_with_confusable_groups():
    tracks, segs = np.array([11, 12, 13]), np.array([11, 12, 14])
    np.testing.assert_array_equal(affinity.category_gate(tracks, segs),
                                  [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(affinity.category_gate(tracks, segs, ((11, 12),)),
                                  [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_fuse_affinities_weighted_mean():
    p, i = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(affinity.fuse_affinities(p, i, 3, 1), [[0.75, 0.25]])
    np.testing.assert_allclose(affinity.fuse_affinities(p, None, 1, 0), p)
    with pytest.raises(ValueError):
        affinity.fuse_affinities(None, i, 1, 1)


def test_hungarian_beats_greedy_and_respects_min_affinity():
    aff = np.array([[0.9, 0.8], [0.85, 0.1]])
    allowed = np.ones_like(aff, bool)
    # greedy would take (0,0) then (1,1)=0.1 (below the minimum); the optimum is (0,1)+(1,0)
    assert assign(aff, allowed, "hungarian", 0.3) == [(0, 1), (1, 0)]
    assert assign(aff, allowed, "hungarian", 0.95) == []
    assert assign(aff, ~np.eye(2, dtype=bool), "hungarian", 0.3) == [(0, 1), (1, 0)]
    assert assign(np.zeros((0, 3)), np.zeros((0, 3), bool), "hungarian", 0.3) == []


def test_mutual_check_keeps_only_mutual_bests():
    aff = np.array([[0.9, 0.8], [0.85, 0.1]])
    # row 0's best is col 0, col 0's best is row 0 → kept; row 1's best is col 0 (taken) → dropped
    assert assign(aff, np.ones_like(aff, bool), "mutual", 0.3) == [(0, 0)]
    aff2 = np.array([[0.5, 0.6], [0.7, 0.2]])
    assert assign(aff2, np.ones_like(aff2, bool), "mutual", 0.3) == [(0, 1), (1, 0)]
    with pytest.raises(ValueError):
        assign(aff, np.ones_like(aff, bool), "greedy", 0.3)


def test_bayesian_appearance_update_equals_batch_posterior():
    """Without process noise, sequential updates give the conjugate batch posterior
    (PRML 2.141–2.142) with prior N(x1, s0²) and N observations of noise r²."""
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(6, 4))
    s0, r = 0.5, 0.2
    model = GaussianAppearance.from_first(xs[0], s0, r)
    for x in xs[1:]:
        model = model.updated(x, r, process_std=0.0)
    precision = 1 / s0 ** 2 + len(xs) / r ** 2
    np.testing.assert_allclose(model.var, 1 / precision)
    np.testing.assert_allclose(model.mean, (xs[0] / s0 ** 2 + xs.sum(axis=0) / r ** 2) / precision)
    # process noise keeps the belief open: a later detection moves the mean further
    still, drifting = model.updated(xs[0], r, process_std=0.0), model.updated(xs[0], r, process_std=0.3)
    assert np.all(drifting.var > still.var)
    assert np.all(np.abs(drifting.mean - xs[0]) < np.abs(still.mean - xs[0]))


def test_segment_statistics_match_direct_masks_including_tiny_segments():
    rng = np.random.default_rng(4)
    index = np.zeros((60, 80), np.uint16)
    index[10:40, 5:50] = 1
    index[45:58, 60:79] = 2
    index[3, 77] = 3                        # one pixel: the subsample (stride 5) misses it
    base = np.array([[20, 20, 20], [200, 40, 40], [40, 200, 90], [10, 10, 250]])
    rgb = np.clip(base[index] + rng.integers(-20, 21, size=(60, 80, 3)), 0, 255).astype(np.uint8)
    desc, cent = segment_statistics(rgb, index, 3, sample_pixels=60 * 80 // 25)
    for k in (1, 2, 3):
        ys, xs = np.nonzero(index == k)
        pix = rgb[ys, xs].astype(np.float64) / 255
        if k == 3:  # exact: measured at full resolution
            np.testing.assert_allclose(desc[2], np.concatenate([pix.mean(0), pix.std(0)]), atol=1e-12)
            np.testing.assert_allclose(cent[2], [77, 3])
        else:       # subsampled: close to the full-resolution statistics
            np.testing.assert_allclose(desc[k - 1], np.concatenate([pix.mean(0), pix.std(0)]), atol=0.02)
            np.testing.assert_allclose(cent[k - 1], [xs.mean(), ys.mean()], atol=2.5)
    exact, _ = segment_statistics(rgb, index, 3, sample_pixels=10 ** 9)
    ys, xs = np.nonzero(index == 1)
    pix = rgb[ys, xs].astype(np.float64) / 255
    np.testing.assert_allclose(exact[0], np.concatenate([pix.mean(0), pix.std(0)]), atol=1e-9)
    none, _ = segment_statistics(None, index, 3)
    assert none is None


def test_carry_lost_segments_fills_only_free_pixels():
    current = np.array([[0, 1, 1, 2]], np.uint8)          # 1 = a thing, 2 = stuff
    warped = np.array([[3, 3, 0, 3]], np.uint8)           # previous value 3 = a lost track
    out = affinity.carry_lost_segments(current, warped, 3, np.array([3]), np.array([True, False, True]))
    np.testing.assert_array_equal(out, [[3, 1, 1, 3]])     # carried as value K + 1 = 3, not over the thing
    np.testing.assert_array_equal(affinity.carry_lost_segments(current, warped, 3, np.array([], int),
                                                               np.ones(3, bool)), current)
