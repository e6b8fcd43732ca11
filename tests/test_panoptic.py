"""segments_info built from an id map equals the per-segment definition (area, bbox)."""
import numpy as np
import pytest

from operators.formats.panoptic import segments_from_ids


def _per_segment_definition(ids):
    out = []
    for seg_id in np.unique(ids):
        if seg_id == 0:
            continue
        ys, xs = np.nonzero(ids == seg_id)
        out.append((int(seg_id), len(ys), (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_segments_from_ids_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    ids = np.zeros((60, 90), np.int32) if seed % 2 else np.full((60, 90), 5, np.int32)  # with and without VOID
    for seg_id in rng.choice(np.arange(1, 1 << 24), size=12, replace=False):  # ids beyond 2**16 included
        y, x = rng.integers(0, 55), rng.integers(0, 85)
        ids[y:y + rng.integers(1, 20), x:x + rng.integers(1, 30)] = seg_id
    ids[rng.random(ids.shape) < 0.02] = 77  # a scattered segment: bbox spans the frame
    segments = segments_from_ids(ids, {int(i): 3 for i in np.unique(ids)}, iscrowd_of={77: 1})
    assert [(s.id, s.area, s.bbox) for s in segments] == _per_segment_definition(ids)
    assert all(s.iscrowd == (s.id == 77) and s.category_id == 3 for s in segments)
