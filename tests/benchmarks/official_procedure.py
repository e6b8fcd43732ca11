"""The Cityscapes-VPS benchmark evaluator's procedure, as a baseline for timing `tubeflow
evaluate` end to end (``bench_evaluate_job.py``). Not used by tubeflow.

This follows, step by step and with the same data structures, what ``tools/eval_vpq.py`` of
mcahny/vps (the evaluator published with Kim et al., CVPR 2020; current release, which
deep-copies each frame's records per window) does; it is written here from that procedure,
not copied (that file is CC BY-NC-SA). The steps, in the evaluator's order:

1. ``json.load`` pred.json and the GT JSON whole;
2. read every GT PNG (sorted GT image file names, ``_leftImg8bit.png`` →
   ``_gtFine_color.png``) and every prediction PNG (``pan_pred/<image id>.png``) with PIL
   into RGB arrays, all held in memory;
3. zip GT annotations, prediction annotations, GT arrays, prediction arrays and image
   records by position, split into videos of 6 frames;
4. for each window size (1, 2, 3, 4 annotated frames): deep-copy everything, then for each
   video and each window position, per frame of the window: ids = R + 256 G + 65536 B on
   uint32 copies, per-frame segment dicts (deep copies of the records), predicted areas by
   ``np.unique`` of the prediction's ids (and the PNG/JSON consistency checks); stack the
   window, ``np.unique`` of ``gt · 2^24 + pred`` over the uint64 volume, match tubes
   (same category, GT not crowd, IoU > 0.5), count FN (crowd ignored) and FP (ignored when
   more than half of it is VOID or crowd of its category);
5. per k: PQ averaged over the categories with TP + FP + FN > 0; VPQ = mean over k.

Run: ``python tests/benchmarks/official_procedure.py --submit_dir P --truth_dir D
--pan_gt_json_file F`` — prints one JSON line: vpq, vpq_thing, vpq_stuff (fractions) and
per k. Its results equal tubeflow's (checked by the benchmark on every run).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
from collections import defaultdict

import numpy as np
from PIL import Image

OFFSET = 256 * 256 * 256
VOID = 0
FRAMES_PER_VIDEO = 6


def _stat():
    return {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0}


def _segments(records):
    out = {}
    for record in records:
        if record["id"] in out:
            out[record["id"]]["area"] += record["area"]
        else:
            out[record["id"]] = copy.deepcopy(record)
    return out


def video_windows(video, categories, nframes, stats):
    """Add the sums of every window of ``nframes`` annotated frames of one video."""
    for start in range(0, len(video) - nframes + 1):
        gt_maps, pred_maps, gt_dicts, pred_dicts = [], [], [], []
        for gt_json, pred_json, gt_rgb, pred_rgb, _ in video[start:start + nframes]:
            gt_rgb, pred_rgb = np.uint32(gt_rgb), np.uint32(pred_rgb)
            gt_ids = gt_rgb[:, :, 0] + gt_rgb[:, :, 1] * 256 + gt_rgb[:, :, 2] * 256 * 256
            pred_ids = pred_rgb[:, :, 0] + pred_rgb[:, :, 1] * 256 + pred_rgb[:, :, 2] * 256 * 256
            gt_segments = _segments(gt_json["segments_info"])
            pred_segments = _segments(pred_json["segments_info"])
            listed = set(record["id"] for record in pred_json["segments_info"])
            labels, counts = np.unique(pred_ids, return_counts=True)
            for label, count in zip(labels, counts):
                if label not in pred_segments:
                    if label == VOID:
                        continue
                    raise KeyError(f"segment {label} is in the PNG and not in the JSON")
                pred_segments[label]["area"] = count
                listed.remove(label)
                if pred_segments[label]["category_id"] not in categories:
                    raise KeyError(f"segment {label} has an unknown category")
            if listed:
                raise KeyError(f"segments {sorted(listed)} are in the JSON and not in the PNG")
            gt_maps.append(gt_ids)
            pred_maps.append(pred_ids)
            gt_dicts.append(gt_segments)
            pred_dicts.append(pred_segments)
        gt_volume, pred_volume = np.stack(gt_maps), np.stack(pred_maps)
        gt_tubes, pred_tubes = {}, {}
        for gt_segments, pred_segments in zip(gt_dicts, pred_dicts):
            for tubes, segments in ((gt_tubes, gt_segments), (pred_tubes, pred_segments)):
                for sid, record in segments.items():
                    if sid in tubes:
                        tubes[sid]["area"] += record["area"]
                    else:
                        tubes[sid] = record
        pairs = gt_volume.astype(np.uint64) * OFFSET + pred_volume.astype(np.uint64)
        overlap = {}
        labels, counts = np.unique(pairs, return_counts=True)
        for label, count in zip(labels, counts):
            overlap[(label // OFFSET, label % OFFSET)] = count
        gt_matched, pred_matched = set(), set()
        for (gt_label, pred_label), intersection in overlap.items():
            if gt_label not in gt_tubes or pred_label not in pred_tubes:
                continue
            if gt_tubes[gt_label]["iscrowd"] == 1:
                continue
            if gt_tubes[gt_label]["category_id"] != pred_tubes[pred_label]["category_id"]:
                continue
            union = pred_tubes[pred_label]["area"] + gt_tubes[gt_label]["area"] - intersection \
                - overlap.get((VOID, pred_label), 0)
            iou = intersection / union
            if iou > 0.5:
                stats[gt_tubes[gt_label]["category_id"]]["tp"] += 1
                stats[gt_tubes[gt_label]["category_id"]]["iou"] += iou
                gt_matched.add(gt_label)
                pred_matched.add(pred_label)
        crowd = {}
        for gt_label, tube in gt_tubes.items():
            if gt_label in gt_matched:
                continue
            if tube["iscrowd"] == 1:
                crowd[tube["category_id"]] = gt_label
                continue
            stats[tube["category_id"]]["fn"] += 1
        for pred_label, tube in pred_tubes.items():
            if pred_label in pred_matched:
                continue
            intersection = overlap.get((VOID, pred_label), 0)
            if tube["category_id"] in crowd:
                intersection += overlap.get((crowd[tube["category_id"]], pred_label), 0)
            if intersection / tube["area"] > 0.5:
                continue
            stats[tube["category_id"]]["fp"] += 1


def pq_average(stats, categories, isthing):
    pq, n = 0.0, 0
    for label, info in categories.items():
        if isthing is not None and (info["isthing"] == 1) != isthing:
            continue
        s = stats[label]
        if s["tp"] + s["fp"] + s["fn"] == 0:
            continue
        n += 1
        pq += s["iou"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
    return pq / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submit_dir", required=True)
    parser.add_argument("--truth_dir", required=True)
    parser.add_argument("--pan_gt_json_file", required=True)
    args = parser.parse_args()
    with open(os.path.join(args.submit_dir, "pred.json")) as f:
        pred_jsons = json.load(f)
    with open(args.pan_gt_json_file) as f:
        gt_jsons = json.load(f)
    categories = {c["id"]: c for c in gt_jsons["categories"]}
    files = sorted(image["file_name"].replace("_leftImg8bit.png", "_gtFine_color.png") for image in gt_jsons["images"])
    gt_pans = [np.array(Image.open(os.path.join(args.truth_dir, name))) for name in files]
    pred_pans = [np.array(Image.open(os.path.join(args.submit_dir, "pan_pred", image["id"] + ".png")))
                 for image in gt_jsons["images"]]
    everything = list(zip(gt_jsons["annotations"], pred_jsons["annotations"], gt_pans, pred_pans, gt_jsons["images"]))
    videos = [everything[i:i + FRAMES_PER_VIDEO] for i in range(0, len(everything), FRAMES_PER_VIDEO)]
    result = {"per_k": {}}
    for nframes in (1, 2, 3, 4):
        copied = copy.deepcopy(videos)
        stats = defaultdict(_stat)
        for video in copied:
            video_windows(video, categories, nframes, stats)
        del copied
        result["per_k"][(nframes - 1) * 5] = {name: pq_average(stats, categories, isthing)
                                              for name, isthing in (("all", None), ("things", True), ("stuff", False))}
    for name, key in (("all", "vpq"), ("things", "vpq_thing"), ("stuff", "vpq_stuff")):
        result[key] = sum(v[name] for v in result["per_k"].values()) / len(result["per_k"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
