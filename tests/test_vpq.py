"""VPQ: hand-computed windows, the benchmark evaluator's rules one by one, and random
corpora against the slow pixel-stacking reference for every k."""
from __future__ import annotations

import re
from dataclasses import astuple

import cv2
import numpy as np
import pytest

from metrics_cases import case_frame, draw, random_corpus, segments, tables
from operators.errors import CorruptFileError, FormatMismatchError
from operators.formats.categories import CITYSCAPES_CATEGORIES, categories_by_id
from operators.formats.panoptic import encode_panoptic_png, decode_panoptic_png
from operators.metrics.contingency import decode_ids, frame_table
from operators.metrics.reference import reference_vpq, reference_vpq_sums
from operators.metrics.vpq import PqSums, VideoVpq, VpqStats, quality, window_counts, window_frames

CATEGORIES = categories_by_id(CITYSCAPES_CATEGORIES)
ROAD, PERSON, RIDER, CAR = 0, 11, 12, 13
IDS = {"a": 1, "b": 2, "c": 5, "d": 6, "o": 9, "x": 30, "y": 31, "z": 32}


def one_frame(gt_rows, gt_cat, pred_rows, pred_cat, crowd=(), gt_order=None):
    gt, pred = draw(gt_rows, IDS), draw(pred_rows, IDS)
    return case_frame(gt, segments(gt, gt_cat, crowd, gt_order), pred, segments(pred, pred_cat))


def test_prediction_on_void_is_left_out_of_the_union():
    # x: 4 px, 2 on GT a and 2 on VOID → union = 4 + 2 − 2 − 2 = 2, IoU = 1
    t = one_frame(["aa.."], {1: CAR}, ["xxxx"], {30: CAR})
    assert window_counts([t]) == {CAR: PqSums(1.0, 1, 0, 0)}


def test_iou_of_exactly_one_half_does_not_match():
    t = one_frame(["aaaa"], {1: CAR}, ["xx.."], {30: CAR})  # IoU = 2 / 4
    assert window_counts([t]) == {CAR: PqSums(0.0, 0, 1, 1)}
    t = one_frame(["aaaa"], {1: CAR}, ["xxx."], {30: CAR})  # IoU = 3 / 4
    assert window_counts([t]) == {CAR: PqSums(0.75, 1, 0, 0)}


def test_categories_must_agree():
    t = one_frame(["aaaa"], {1: CAR}, ["xxxx"], {30: PERSON})
    assert window_counts([t]) == {CAR: PqSums(0.0, 0, 0, 1), PERSON: PqSums(0.0, 0, 1, 0)}


def test_prediction_on_crowd_of_its_category_is_not_a_false_positive():
    # c: crowd person; x (person) lies on it: not FP; y (rider) on it: FP; a (car) has no match: FN.
    t = one_frame(["cccaa", "cc..."], {5: PERSON, 1: CAR}, ["xxy..", "xx..."], {30: PERSON, 31: RIDER}, crowd=[5])
    assert window_counts([t]) == {CAR: PqSums(0.0, 0, 0, 1), RIDER: PqSums(0.0, 0, 1, 0)}


def test_void_plus_crowd_share_must_exceed_one_half():
    # x: 1 px crowd + 1 px VOID + 1 px on a → 2/3 ignored → not FP; a (4 px) → FN
    t = one_frame(["c.aaaa"], {5: PERSON, 1: PERSON}, ["xxx..."], {30: PERSON}, crowd=[5])
    assert window_counts([t]) == {PERSON: PqSums(0.0, 0, 0, 1)}
    # x: 1 crowd + 1 VOID + 2 on a → exactly 1/2 ignored → FP (and IoU 2/(4+4−2−1) < 0.5)
    t = one_frame(["c.aaaa"], {5: PERSON, 1: PERSON}, ["xxxx.."], {30: PERSON}, crowd=[5])
    assert window_counts([t]) == {PERSON: PqSums(0.0, 0, 1, 1)}


@pytest.mark.parametrize("order, false_positives", [([6, 5], 0), ([5, 6], 1)])
def test_the_last_crowd_tube_of_a_category_in_json_order_is_used(order, false_positives):
    # c and d are both crowd persons; x lies on c. The evaluator keeps one crowd per
    # category: the last in order of first appearance (segments_info order in a frame).
    t = one_frame(["ccdd"], {5: PERSON, 6: PERSON}, ["xx.."], {30: PERSON}, crowd=[5, 6], gt_order=order)
    counts = window_counts([t])
    assert counts.get(PERSON, PqSums()) == PqSums(0.0, 0, false_positives, 0)


def test_a_tube_spans_the_window_and_an_id_switch_costs_the_match():
    f0 = one_frame(["aaaa"], {1: CAR}, ["xxxx"], {30: CAR})
    f1 = one_frame(["aaaa"], {1: CAR}, ["yyyy"], {31: CAR})
    f1.frame_index = 5
    assert window_counts([f0]) == window_counts([f1]) == {CAR: PqSums(1.0, 1, 0, 0)}
    # k=5: the GT tube has 8 px, each predicted tube 4 px inside it → IoU 0.5 each: no match.
    assert window_counts([f0, f1]) == {CAR: PqSums(0.0, 0, 2, 1)}
    video = VideoVpq("v", ks=(0, 5))
    video.update(f0)
    video.update(f1)
    result = video.stats().result(CATEGORIES, ks=(0, 5))
    assert result.per_k[0]["all"]["pq"] == 1.0 and result.per_k[5]["all"]["pq"] == 0.0
    assert result.vpq == 0.5


def test_category_and_crowd_come_from_the_first_frame_of_the_window():
    f0 = one_frame(["aaaa"], {1: CAR}, ["xxxx"], {30: CAR})
    f1 = one_frame(["aaaa"], {1: PERSON}, ["xxxx"], {30: PERSON})  # both relabelled later
    assert window_counts([f0, f1]) == {CAR: PqSums(1.0, 1, 0, 0)}
    assert window_counts([f1, f0]) == {PERSON: PqSums(1.0, 1, 0, 0)}


def test_mean_over_categories_counts_categories_with_only_false_negatives():
    t = one_frame(["aaaabbbb"], {1: CAR, 2: ROAD}, ["xxxx...."], {30: CAR})
    video = VideoVpq("v", ks=(0,))
    video.update(t)
    result = video.stats().result(CATEGORIES, ks=(0,))
    assert result.per_k[0]["all"] == {"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2}
    assert result.per_k[0]["things"]["pq"] == 1.0 and result.per_k[0]["stuff"]["pq"] == 0.0


def _entering_object_video():
    """4 annotated frames; object o (car, 2 px) is visible in frames 1 and 2 only."""
    rows = [(["bbbb"], ["zzzz"]), (["oobb"], ["xxzz"]), (["oobb"], ["xxzz"]), (["bbbb"], ["zzzz"])]
    frames = []
    for i, (g, p) in enumerate(rows):
        t = one_frame(g, {2: ROAD, 9: CAR}, p, {30: CAR, 32: ROAD})
        t.frame_index = 5 * i
        frames.append(t)
    return frames


def test_gt_tube_areas_are_summed_over_the_window_by_default():
    # k=10 windows: frames 0-2 and 1-3; in both, o (2 px a frame) is in two frames: GT
    # area 4, IoU 1. The paper, the issue and the benchmark's evaluator (mcahny/vps
    # tools/eval_vpq.py, which deep-copies each frame's segments_info record per window)
    # all sum the window's JSON areas.
    video = VideoVpq("v")
    for t in _entering_object_video():
        video.update(t)
    assert video.stats().sums()[(10, CAR)] == PqSums(2.0, 2, 0, 0)


def test_gt_tube_areas_of_the_legacy_evaluator():
    # The evaluator's first release shared the JSON records between windows: frame 2's area
    # went into frame 1's record in the first window and again in the second: GT area
    # 2+2 = 4 (IoU 1), then 4+2 = 6 (IoU 4/6). Stuff b is in every frame.
    legacy, summed = VideoVpq("v", gt_area="legacy"), VideoVpq("v", gt_area="summed")
    for t in _entering_object_video():
        legacy.update(t)
        summed.update(t)
    legacy_sums, summed_sums = legacy.stats().sums(), summed.stats().sums()
    assert astuple(legacy_sums[(10, CAR)]) == pytest.approx((1.0 + 4 / 6, 2, 0, 0), abs=1e-15)
    assert summed_sums[(10, CAR)] == PqSums(2.0, 2, 0, 0)
    assert legacy_sums[(15, CAR)] == summed_sums[(15, CAR)] == PqSums(1.0, 1, 0, 0)
    # windows slide by one annotated frame and only whole windows count: 4, 3, 2, 1
    assert [legacy_sums[(k, ROAD)].tp for k in (0, 5, 10, 15)] == [4, 3, 2, 1]


def test_a_video_shorter_than_the_window_has_no_window():
    video = VideoVpq("v")
    for t in _entering_object_video()[:2]:
        video.update(t)
    assert {k for k, _ in video.stats().sums()} == {0, 5}


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("rule", ["legacy", "summed"])
def test_random_corpora_equal_the_pixel_stacking_reference(seed, rule):
    corpus = random_corpus(seed, videos=3, max_frames=6)
    parts = []
    for n, video in enumerate(corpus):
        acc = VideoVpq(f"v{n}", gt_area=rule)
        for t in tables(video):
            acc.update(t)
        parts.append(acc.stats())
    ours = VpqStats.merge(parts).sums()
    expected = reference_vpq_sums(corpus, gt_area=rule)
    assert set(ours) == set(expected)
    for key, (iou, tp, fp, fn) in expected.items():
        assert (ours[key].tp, ours[key].fp, ours[key].fn) == (tp, fp, fn), key
        assert ours[key].iou_sum == pytest.approx(iou, abs=1e-12)
    result = VpqStats.merge(parts).result(CATEGORIES)
    isthing = {c.id: c.isthing for c in CATEGORIES.values()}
    ref = reference_vpq(expected, isthing)
    for ours_value, ref_value in ((result.vpq, ref["all"]), (result.vpq_thing, ref["things"]),
                                  (result.vpq_stuff, ref["stuff"])):
        assert ours_value == pytest.approx(ref_value, abs=1e-9, nan_ok=True)


def test_merge_is_associative_and_commutative():
    corpus = random_corpus(99, videos=6)
    stats = []
    for n, video in enumerate(corpus):
        acc = VideoVpq(f"v{n}")
        for t in tables(video):
            acc.update(t)
        stats.append(acc.stats())
    whole = VpqStats.merge(stats).sums()
    rng = np.random.default_rng(0)
    for _ in range(5):
        order = rng.permutation(len(stats))
        cut = int(rng.integers(1, len(stats)))
        left = VpqStats.merge([stats[i] for i in order[:cut]])
        right = VpqStats.merge([stats[i] for i in order[cut:]], keep_videos=False)
        merged = VpqStats.merge([right, left], keep_videos=False).sums()
        assert merged.keys() == whole.keys()
        for key in whole:
            assert (merged[key].tp, merged[key].fp, merged[key].fn) == (whole[key].tp, whole[key].fp, whole[key].fn)
            assert merged[key].iou_sum == pytest.approx(whole[key].iou_sum, abs=1e-12)
    # Arrow rows round trip
    table = VpqStats.merge(stats).table
    assert table.column_names == ["video_id", "k", "category_id", "iou_sum", "tp", "fp", "fn"]
    assert VpqStats(table).sums() == VpqStats.merge(stats).sums()


def test_ratios_from_sums():
    pq, sq, rq = quality([3.0, 0.0], [4, 0], [2, 1], [0, 3])
    assert pq.tolist() == [3.0 / 5, 0.0] and sq.tolist() == [0.75, 0.0] and rq.tolist() == [4 / 5, 0.0]
    assert window_frames(15, 5) == 4 and window_frames(0, 5) == 1
    with pytest.raises(ValueError):
        window_frames(7, 5)


def test_contingency_table_counts_pairs_once():
    gt = draw(["aab.", "abb."], IDS)
    pred = draw(["xxxy", "..yy"], IDS)
    t = frame_table(0, gt, segments(gt, {1: CAR, 2: ROAD}), pred, segments(pred, {30: CAR, 31: ROAD}))
    pairs = {(g, p): c for g, p, c in zip(t.pair_gt.tolist(), t.pair_pred.tolist(), t.pair_pixels.tolist())}
    assert pairs == {(1, 30): 2, (1, 0): 1, (2, 30): 1, (2, 31): 1, (2, 0): 1, (0, 31): 2}
    assert t.gt.pixels.tolist() == [3, 3] and t.pred.pixels.tolist() == [3, 3]


@pytest.mark.parametrize("kind", ["blocks", "noise", "one_id", "empty"])
def test_run_counting_equals_counting_every_pixel(kind):
    """The table counts runs of equal (GT, predicted) pairs in raster order: the same counts
    as the straightforward per-pixel count, for piecewise-constant maps, maps where every
    pixel starts a run, a single id and an empty frame; an unlisted id inside a run is named."""
    rng = np.random.default_rng(len(kind))
    shape = {"empty": (0, 7)}.get(kind, (37, 53))
    gt_pool, pred_pool = rng.choice(1 << 24, 12, replace=False), rng.choice(1 << 24, 9, replace=False)
    if kind == "blocks":   # rectangles over rectangles, as segments are
        gt, pred = np.zeros(shape, np.uint32), np.zeros(shape, np.uint32)
        for ids, pool in ((gt, gt_pool), (pred, pred_pool)):
            for value in pool:
                y, x = rng.integers(0, 30), rng.integers(0, 45)
                ids[y:y + rng.integers(1, 15), x:x + rng.integers(1, 20)] = value
    elif kind == "noise":
        gt, pred = rng.choice(gt_pool, shape).astype(np.uint32), rng.choice(pred_pool, shape).astype(np.uint32)
    else:
        gt, pred = np.full(shape, gt_pool[0], np.uint32), np.full(shape, pred_pool[0], np.uint32)
    gt_segs = segments(gt, {int(i): CAR for i in np.unique(gt) if i})
    pred_segs = segments(pred, {int(i): CAR for i in np.unique(pred) if i})
    t = frame_table(0, gt, gt_segs, pred, pred_segs)
    pairs, counts = np.unique(np.stack([gt.ravel(), pred.ravel()]), axis=1, return_counts=True)
    expected = {(int(g), int(p)): int(c) for (g, p), c in zip(pairs.T, counts)}
    assert dict(zip(zip(t.pair_gt.tolist(), t.pair_pred.tolist()), t.pair_pixels.tolist())) == expected
    assert t.gt.pixels.tolist() == [int((gt == s.id).sum()) for s in gt_segs]
    if gt.size:
        hidden = 1 << 23 | 5   # a row of an id that segments_info does not list
        gt[shape[0] // 2, :] = hidden
        with pytest.raises(FormatMismatchError, match=f"segment ids \\[{hidden}\\] are in the PNG") as info:
            frame_table(0, gt, gt_segs, pred, pred_segs, gt_where="g.png")
        assert info.value.where == "g.png"


@pytest.mark.parametrize("problem", ["png_only", "json_only", "size", "category"])
def test_bad_frames_are_named(problem):
    gt = draw(["aab"], IDS)
    pred = draw(["xxy"], IDS)
    gt_segs, pred_segs = segments(gt, {1: CAR, 2: ROAD}), segments(pred, {30: CAR, 31: ROAD})
    kwargs = dict(gt_where="gt.png", pred_where="pred.png", known_categories=CATEGORIES)
    if problem == "png_only":
        pred_segs = pred_segs[:1]
        message = "in the PNG but not in segments_info"
    elif problem == "json_only":
        pred = draw(["xxx"], IDS)
        message = "in segments_info but not in the PNG"
    elif problem == "size":
        pred = draw(["xxyy"], IDS)
        message = "differs"
    else:
        pred_segs = segments(pred, {30: CAR, 31: 77})
        message = "unknown category ids [77]"
    with pytest.raises(FormatMismatchError, match=re.escape(message)) as info:
        frame_table(0, gt, gt_segs, pred, pred_segs, **kwargs)
    assert info.value.where == "pred.png"


def test_fast_decoder_equals_the_shared_decoder():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 1 << 24, size=(5, 9)).astype(np.int32)
    data = encode_panoptic_png(ids)
    assert np.array_equal(decode_ids(data, "x.png"), decode_panoptic_png(data, "x.png"))
    assert np.array_equal(decode_ids(data, "x.png"), ids)
    grey = cv2.imencode(".png", (ids % 256).astype(np.uint8))[1].tobytes()  # ids < 256 as one channel
    assert np.array_equal(decode_ids(grey, "g.png"), ids % 256)
    deep = cv2.imencode(".png", np.zeros((2, 3, 3), np.uint16))[1].tobytes()
    for decode in (decode_ids, decode_panoptic_png):
        with pytest.raises(CorruptFileError, match="d.png: panoptic PNG must be 8-bit RGB"):
            decode(deep, "d.png")
        with pytest.raises(CorruptFileError, match="c.png: cannot decode PNG"):
            decode(data[:20], "c.png")


def test_contingency_tables_from_concurrent_threads_are_exact():
    """frame_table reuses one scratch id table per process; threads that share a worker
    (a threaded actor, a thread pool over frames) must not see each other's entries."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    inputs = []
    for _ in range(8):  # the same ids in every frame, listed in another order: other dense indices
        gt = rng.integers(1, 40, size=(512, 1024)).astype(np.int32)
        pred = rng.integers(100, 140, size=(512, 1024)).astype(np.int32)
        gt_segs = segments(gt, dict.fromkeys(range(1, 40), CAR))
        pred_segs = segments(pred, dict.fromkeys(range(100, 140), CAR))
        inputs.append((gt, list(rng.permutation(gt_segs)), pred, list(rng.permutation(pred_segs))))

    def pairs(args):
        t = frame_table(0, *args)
        return sorted(zip(t.pair_gt.tolist(), t.pair_pred.tolist(), t.pair_pixels.tolist()))

    expected = [pairs(a) for a in inputs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            assert list(pool.map(pairs, inputs)) == expected
