"""STQ: hand-computed cases and an independent per-pixel implementation of deeplab2's
formulas (STEP, Weber et al. 2021, Eq. 2–4)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from metrics_cases import random_corpus, tables
from operators.metrics.stq import StqStats, STQuality

THINGS = (11, 12, 13)
NUM_CLASSES = 19


def slow_stq(sequences, num_classes, things, ignore, divisor):
    """deeplab2's STQ written pixel by pixel. ``sequences``: {id: [(y_true, y_pred), …]}."""
    size = num_classes + 1 if ignore >= num_classes else num_classes

    def sem_index(s):
        return num_classes if (s == ignore and ignore > num_classes) else s

    total = [[0] * size for _ in range(size)]
    aq_sum, tubes = 0.0, 0
    per_seq = {}
    for seq_id, frames in sequences.items():
        conf = [[0] * size for _ in range(size)]
        gt_area, pred_area, inter = Counter(), Counter(), Counter()
        for y_true, y_pred in frames:
            for t, p in zip(np.ravel(y_true).tolist(), np.ravel(y_pred).tolist()):
                st, sp = sem_index(t // divisor), sem_index(p // divisor)
                if t // divisor != ignore:  # GT ignore rows are removed from the class IoU
                    conf[st][sp] += 1
                crowd = st in things and t % divisor == 0
                in_gt = st in things and not crowd
                in_pred = sp in things and not crowd
                gt_area[t] += in_gt
                pred_area[p] += in_pred
                if in_gt and in_pred:
                    inter[(t, p)] += 1
        seq_aq = 0.0
        gt_tubes = [g for g in gt_area if gt_area[g] > 0]
        for g in gt_tubes:
            inner = sum(i * i / (pred_area[p] + gt_area[g] - i) for (g2, p), i in inter.items() if g2 == g)
            seq_aq += inner / gt_area[g]
        aq_sum += seq_aq
        tubes += len(gt_tubes)
        per_seq[seq_id] = seq_aq / max(len(gt_tubes), 1e-15)
        for a in range(size):
            for b in range(size):
                total[a][b] += conf[a][b]

    ious = []
    for c in range(size):
        tp = total[c][c]
        union = sum(total[c]) + sum(row[c] for row in total) - tp
        if union:
            ious.append(tp / union)
    iou = sum(ious) / len(ious)
    aq = aq_sum / max(tubes, 1e-15)
    return {"STQ": math.sqrt(aq * iou), "AQ": aq, "IoU": iou, "AQ_per_seq": per_seq}


def label(sem, inst=0, divisor=1000):
    return sem * divisor + inst


def test_id_switch_halves_association_quality():
    # 1×4 frames: car instance 1 on two pixels, road on two. Prediction switches id at frame 1.
    metric = STQuality(num_classes=2, things=[1], ignore_label=255, label_divisor=1000)
    gt = np.array([[label(1, 1), label(1, 1), label(0), label(0)]])
    metric.update(gt, np.array([[label(1, 5), label(1, 5), label(0), label(0)]]), "s")
    metric.update(gt, np.array([[label(1, 6), label(1, 6), label(0), label(0)]]), "s")
    result = metric.result()
    # tube 1001 (4 px) meets 1005 and 1006 (2 px each, IoU 2/4): AQ = (2·½ + 2·½) / 4 = ½
    assert result["AQ"] == 0.5 and result["IoU"] == 1.0
    assert result["STQ"] == pytest.approx(math.sqrt(0.5), abs=1e-15)


def test_crowd_and_ignore_as_deeplab2():
    metric = STQuality(num_classes=2, things=[1], ignore_label=255, label_divisor=1000)
    # pixel 0: crowd car (instance 0) → left out of AQ on both sides; pixel 2: GT ignore → no class IoU row
    metric.update(np.array([label(1, 0), label(1, 1), label(255), label(0)]),
                        np.array([label(1, 1), label(1, 1), label(0), label(0)]), 0)
    result = metric.result()
    assert result["AQ"] == 1.0 and result["IoU"] == 1.0
    # predicting the ignore label on road: road IoU ½ and the ignore class enters the mean with IoU 0
    metric = STQuality(num_classes=2, things=[1], ignore_label=255, label_divisor=1000)
    metric.update(np.array([label(0), label(0)]), np.array([label(255), label(0)]), 0)
    assert metric.result()["IoU"] == 0.25


@pytest.mark.parametrize("ignore, divisor", [(255, 1000), (19, 1000), (0, 4096)])
def test_random_label_maps_equal_the_slow_implementation(ignore, divisor):
    rng = np.random.default_rng(ignore + divisor)
    sequences = {}
    for seq in range(3):
        frames = []
        for _ in range(int(rng.integers(1, 4))):
            sem = rng.choice([0, 1, 11, 13, ignore], size=(5, 6))
            inst = np.where(np.isin(sem, THINGS), rng.integers(0, 3, size=sem.shape), 0)
            y_true = sem * divisor + inst
            flip = rng.random(sem.shape) < 0.3
            sem_p = np.where(flip, rng.choice([0, 1, 11, 13, ignore], size=sem.shape), sem)
            inst_p = np.where(np.isin(sem_p, THINGS), rng.integers(0, 4, size=sem.shape), 0)
            frames.append((y_true, sem_p * divisor + inst_p))
        sequences[f"s{seq}"] = frames
    metric = STQuality(NUM_CLASSES, THINGS, ignore_label=ignore, label_divisor=divisor)
    for seq, frames in sequences.items():
        for y_true, y_pred in frames:
            metric.update(y_true, y_pred, seq)
    ours, slow = metric.result(), slow_stq(sequences, NUM_CLASSES, THINGS, ignore, divisor)
    for key in ("STQ", "AQ", "IoU"):
        assert ours[key] == pytest.approx(slow[key], abs=1e-12)
    assert ours["AQ_per_seq"].tolist() == pytest.approx([slow["AQ_per_seq"][s] for s in ours["ID_per_seq"]], abs=1e-12)


def _label_maps(frame, things, divisor=1000, ignore=255):
    """A reference frame as deeplab2 label maps: crowd and stuff → instance 0, VOID → ignore."""
    def convert(ids, segs):
        out = np.full(ids.shape, ignore * divisor, np.int64)
        for s in segs:
            instance = s.id if s.category_id in things and not s.iscrowd else 0
            out[ids == s.id] = s.category_id * divisor + instance
        return out
    return convert(frame.gt_ids, frame.gt_segments), convert(frame.pred_ids, frame.pred_segments)


def test_contingency_tables_give_the_label_map_result():
    corpus = random_corpus(5, videos=4)
    from_tables, from_maps = STQuality(NUM_CLASSES, THINGS), STQuality(NUM_CLASSES, THINGS, label_divisor=1000)
    for n, video in enumerate(corpus):
        for frame, table in zip(video, tables(video)):
            from_tables.update_from_table(table, f"v{n}")
            from_maps.update(*_label_maps(frame, THINGS), f"v{n}")
    a, b = from_tables.result(), from_maps.result()
    for key in ("STQ", "AQ", "IoU"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)


def test_merging_states_and_stats_gives_the_same_result():
    corpus = random_corpus(8, videos=5)
    whole = STQuality(NUM_CLASSES, THINGS)
    parts = [STQuality(NUM_CLASSES, THINGS) for _ in range(3)]
    for n, video in enumerate(corpus):
        for i, table in enumerate(tables(video)):
            whole.update_from_table(table, f"v{n}")
            parts[(n + i) % 3].update_from_table(table, f"v{n}")  # one video's frames on several workers
    merged = STQuality(NUM_CLASSES, THINGS)
    merged.merge(parts[::-1])
    expected = whole.result()
    for result in (merged.result(), StqStats.merge([whole.stats()], keep_videos=False).result()):
        for key in ("STQ", "AQ", "IoU"):
            assert result[key] == pytest.approx(expected[key], abs=1e-12)
    per_video = [STQuality(NUM_CLASSES, THINGS) for _ in corpus]
    for n, video in enumerate(corpus):
        for table in tables(video):
            per_video[n].update_from_table(table, f"v{n}")
    stats = [p.stats() for p in per_video]
    halves = StqStats.merge([StqStats.merge(stats[:2], keep_videos=False), StqStats.merge(stats[2:])], keep_videos=False)
    assert halves.result()["STQ"] == pytest.approx(expected["STQ"], abs=1e-12)
    with pytest.raises(ValueError, match="same sequence"):
        StqStats.merge([stats[0], stats[0]])
