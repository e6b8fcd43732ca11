"""The association's fast paths against the straightforward code they replace, on random inputs.

Each fast path must give exactly (bit for bit) what the plain implementation gives: the learned
tracker's weights were trained on these features, and the hybrid tracker's ids must not move.
"""
import numpy as np
import pytest

from operators.association import affinity, motion
from operators.association.appearance import GaussianAppearance, _moments, sample_stride, segment_statistics
from operators.association.tracker import _void_count

RNG_SEEDS = range(12)


def _random_index(rng, shape, values, dtype):
    return rng.integers(0, values, size=shape).astype(dtype)


@pytest.mark.skipif(affinity._RELATIVE_MAP is None, reason="OpenCV < 4.10 has no relative remap")
@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_relative_remap_equals_the_absolute_map(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 400, size=2))
    index = _random_index(rng, (height, width), 250 if seed % 2 else 600, np.uint8 if seed % 2 else np.uint16)
    kind = seed % 3
    if kind == 0:     # smooth-ish float flow, much of it pointing outside the frame
        flow = rng.normal(0, 40, size=(height, width, 2))
    elif kind == 1:   # exact half pixels: where rounding of x + flow could differ
        flow = rng.integers(-50, 50, size=(height, width, 2)) + 0.5
    else:             # eighths of a pixel, nudged by one float32 step either way
        flow = rng.integers(-4000, 4000, size=(height, width, 2)) / 8 + \
            rng.choice([0.0, 1e-7, -1e-7, 0.49999997, 0.5000001], size=(height, width, 2))
    flow = flow.astype(np.float32)
    assert np.array_equal(affinity.warp_segments(index, flow), affinity.warp_segments_absolute(index, flow))


def _carry_reference(current, warped, n_previous, rows, free):
    """The plain rule: a carried track's value where the current pixel is free, else the current value."""
    n, n_carried = len(free) - 1, len(rows)
    dtype = affinity.index_dtype(n + n_carried)
    value_of_row = np.zeros(n_previous + 1, np.int64)
    value_of_row[rows] = np.arange(n + 1, n + n_carried + 1)
    carried = value_of_row[warped]
    take = np.asarray(free, bool)[current] & (carried > 0)
    return np.where(take, carried, current).astype(dtype)


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_carried_lost_segments_equal_the_plain_rule(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 120)), int(rng.integers(1, 120)))
    n = int(rng.integers(1, 300 if seed % 3 == 0 else 120))          # some frames need uint16
    n_previous = int(rng.integers(1, 300 if seed % 4 == 0 else 200))
    current = _random_index(rng, shape, n + 1, affinity.index_dtype(n))
    warped = _random_index(rng, shape, n_previous + 1, affinity.index_dtype(n_previous))
    rows = rng.choice(np.arange(1, n_previous + 1), size=min(n_previous, int(rng.integers(1, 6))), replace=False)
    free = rng.random(n + 1) < 0.5
    free[0] = True
    out = affinity.carry_lost_segments(current, warped, n_previous, rows, free)
    expected = _carry_reference(current, warped, n_previous, rows, free)
    assert out.dtype == expected.dtype and np.array_equal(out, expected)


def _moments_reference(labels, ys, xs, colours, n_segments):
    """The weighted bincounts the histogram path replaces."""
    size = n_segments + 1
    out = np.zeros((9, size))
    out[0] = np.bincount(labels, minlength=size)
    out[1] = np.bincount(labels, weights=ys, minlength=size)
    out[2] = np.bincount(labels, weights=xs, minlength=size)
    for c in range(3):
        channel = colours[:, c].astype(np.float64)
        out[3 + c] = np.bincount(labels, weights=channel, minlength=size)
        out[6 + c] = np.bincount(labels, weights=channel * channel, minlength=size)
    return out


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_colour_moments_equal_weighted_bincounts(seed):
    rng = np.random.default_rng(seed)
    pixels, n = int(rng.integers(1, 300_000)), int(rng.integers(0, 255))
    labels = _random_index(rng, pixels, n + 1, np.uint8)
    ys, xs = rng.integers(0, 4000, size=pixels), rng.integers(0, 4000, size=pixels)
    colours = rng.integers(0, 256, size=(pixels, 3)).astype(np.uint8)
    assert np.array_equal(_moments(labels, ys, xs, colours, n), _moments_reference(labels, ys, xs, colours, n))


def test_segment_statistics_of_a_large_frame_equal_the_reference():
    """The whole descriptor (subsample plus the full-resolution pass for small segments)."""
    rng = np.random.default_rng(3)
    index = np.zeros((512, 1024), np.uint8)
    for k in range(1, 60):
        y, x = rng.integers(0, 500), rng.integers(0, 1000)
        h, w = rng.integers(1, 80, size=2)   # some too small for the subsample
        index[y:y + h, x:x + w] = k
    rgb = rng.integers(0, 256, size=(512, 1024, 3)).astype(np.uint8)
    n = int(index.max())
    descriptors, centroids = segment_statistics(rgb, index, n, 1 << 13)
    present = np.bincount(index.ravel(), minlength=n + 1)[1:] > 0
    # every segment the subsample hit is measured on the subsample; compare those with the reference
    stride = sample_stride(512, 1024, 1 << 13)
    sub = index[::stride, ::stride]
    hit = np.bincount(sub.ravel(), minlength=n + 1)[1:] > 0
    rows, cols = np.mgrid[0:512:stride, 0:1024:stride]
    ref = _moments_reference(sub.ravel(), rows.ravel(), cols.ravel(), rgb[::stride, ::stride].reshape(-1, 3), n)
    counts = np.maximum(ref[0, 1:], 1.0)
    mean = ref[3:6, 1:].T / counts[:, None]
    std = np.sqrt(np.maximum(ref[6:9, 1:].T / counts[:, None] - mean ** 2, 0.0))
    expected = np.concatenate([mean, std], axis=1) / 255.0
    assert hit.any() and (present & ~hit).any()
    assert np.array_equal(descriptors[hit], expected[hit])
    assert np.array_equal(centroids[hit], (np.stack([ref[2, 1:], ref[1, 1:]], axis=1) / counts[:, None])[hit])


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_batched_kalman_update_is_bit_identical(seed):
    rng = np.random.default_rng(seed)
    noise = motion.MotionNoise()
    states = []
    for _ in range(int(rng.integers(1, 45))):
        state = motion.initiate(rng.uniform([0, 0, 2], [2000, 1000, 400]), noise)
        for _ in range(int(rng.integers(0, 4))):
            state = motion.predict(state, noise, int(rng.integers(1, 4)))
            state = motion.update(state, state.mean[:3] + rng.normal(0, 8, size=3), noise)
        states.append(motion.predict(state, noise))
    zs = np.array([s.mean[:3] + rng.normal(0, 12, size=3) for s in states])
    means, covs = motion.update_batch(np.array([s.mean for s in states]), np.array([s.cov for s in states]), zs, noise)
    for k, state in enumerate(states):
        single = motion.update(state, zs[k], noise)
        assert np.array_equal(single.mean, means[k]) and np.array_equal(single.cov, covs[k])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64])
def test_void_count_equals_numpy(dtype):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, size=(37, 53)).astype(dtype)
    assert _void_count(ids) == np.count_nonzero(ids == 0)
    assert _void_count(ids[:, ::3]) == np.count_nonzero(ids[:, ::3] == 0)   # not contiguous
    assert _void_count(np.zeros((0, 5), dtype)) == 0



def _category_gate_reference(track_categories, segment_categories, confusable):
    t, s = np.asarray(track_categories)[:, None], np.asarray(segment_categories)[None, :]
    gate = t == s
    for group in confusable:
        gate |= np.isin(t, np.asarray(group)) & np.isin(s, np.asarray(group))
    return gate


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_category_gate_equals_isin_per_group(seed):
    rng = np.random.default_rng(seed)
    groups = tuple(tuple(int(c) for c in rng.choice(30, size=int(rng.integers(1, 6)), replace=False))
                   for _ in range(int(rng.integers(0, 5))))          # groups may overlap, or be none
    tracks, segments = rng.integers(0, 30, size=int(rng.integers(0, 40))), rng.integers(0, 30, size=int(rng.integers(0, 40)))
    gate = affinity.category_gate(tracks, segments, groups)
    assert gate.shape == (len(tracks), len(segments))
    assert np.array_equal(gate, _category_gate_reference(tracks, segments, groups))


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_batched_appearance_update_is_bit_identical(seed):
    rng = np.random.default_rng(seed)
    n, dim = int(rng.integers(1, 45)), 6
    beliefs = [GaussianAppearance(rng.random(dim), rng.uniform(1e-4, 0.1, size=dim)) for _ in range(n)]
    xs, obs_std = rng.random((n, dim)), rng.uniform(0.01, 0.5, size=n)
    means, variances = GaussianAppearance.updated_batch(np.array([b.mean for b in beliefs]),
                                                        np.array([b.var for b in beliefs]), xs, obs_std, 0.02)
    for k, belief in enumerate(beliefs):
        single = belief.updated(xs[k], float(obs_std[k]), 0.02)
        assert np.array_equal(single.mean, means[k]) and np.array_equal(single.var, variances[k])
