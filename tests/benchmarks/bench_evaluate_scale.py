"""`tubeflow evaluate` as the corpus grows: 1,000, 4,000 and 10,000 tiny videos, GT and
predictions in the Cityscapes-VPS layout (JSON + PNGs) and as segments tables.

Run with ``make bench`` (or ``.venv/bin/python -m pytest -q -s -m benchmark
tests/benchmarks/bench_evaluate_scale.py``); ``TUBEFLOW_BENCH_SCALE=200,800,2000`` runs
smaller sizes. Each video has 3 annotated 16×12 frames (a few segments, VOID, crowd, id
switches: ``tests/metrics_cases.random_video``), so the figures are the job's own cost per
video, not pixels. Every run is ``tubeflow evaluate`` in its own process, default executor
(no cluster: a process pool on the machine's cores), timed from launch to exit; the driver's
peak memory is its own high-water RSS (``VmHWM``; the pool's processes are not counted:
they are the workers).

Printed per layout and size: wall seconds per video and its ratio to the smallest size
(target: ≤ 1.2× from 1k to 4k: flat), the driver's peak RSS and its growth per added video
(target: ≤ 10 KB per video). Baseline in the same run: the driver memory per video of the
whole-file reading that ``evaluate`` did before (``read_ground_truth`` + ``read_predictions``
+ ``plan_videos``: every record parsed and held in one process).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from operators.formats.categories import CITYSCAPES_CATEGORIES
from operators.formats.panoptic import encode_panoptic_png
from operators.formats.vps_layout import VpsAnnotation, VpsImage

ROOT = Path(__file__).resolve().parents[2]
SIZES = tuple(int(n) for n in os.environ.get("TUBEFLOW_BENCH_SCALE", "1000,4000,10000").split(","))
FRAMES, DISTINCT = 3, 16  # frames per video; distinct videos whose pixels are reused under new ids

# The peak is VmHWM: ru_maxrss survives exec on Linux, so a child of this (large) pytest
# process would report pytest's own peak.
_HIGH_WATER = "print('PEAK_KB', [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"

_PEAK = f"""
import sys
from jobs.cli import main
code = main(sys.argv[1:])
{_HIGH_WATER}
sys.exit(code)
"""

_WHOLE_FILE = f"""
import sys
from operators.formats.vps_layout import read_ground_truth, read_predictions
from operators.metrics.video import plan_videos
plans = plan_videos(read_ground_truth(sys.argv[1], sys.argv[2]), read_predictions(sys.argv[3]))
{_HIGH_WATER}
"""


def _write_corpus(root: Path, sizes: tuple[int, ...]) -> None:
    """PNGs of max(sizes) videos (``DISTINCT`` videos' pixels under every id), a GT JSON and a
    pred.json per size, and segments tables (the largest written, the others made of links
    to its partitions)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from metrics_cases import random_video

    from operators.formats import convert

    rng = np.random.default_rng(0)
    distinct = [random_video(rng, FRAMES, height=12, width=16) for _ in range(DISTINCT)]
    encoded = [[(encode_panoptic_png(f.gt_ids), encode_panoptic_png(f.pred_ids)) for f in video] for video in distinct]
    (root / "gt").mkdir()
    (root / "pred" / "pan_pred").mkdir(parents=True)
    images, gt_annotations, pred_annotations = [], [], []
    for v in range(max(sizes)):
        for f, frame in enumerate(distinct[v % DISTINCT]):
            image_id = f"{v:06d}_{5 * f:04d}"
            gt_png, pred_png = encoded[v % DISTINCT][f]
            (root / "gt" / f"{image_id}_gt.png").write_bytes(gt_png)
            (root / "pred" / "pan_pred" / f"{image_id}.png").write_bytes(pred_png)
            images.append(VpsImage(image_id, f"{image_id}.png", 16, 12, f"{v:06d}", 5 * f).to_json())
            gt_annotations.append(VpsAnnotation(image_id, f"{image_id}_gt.png", list(frame.gt_segments)).to_json())
            pred_annotations.append(VpsAnnotation(image_id, f"{image_id}.png", list(frame.pred_segments)).to_json())
    categories = [c.to_json() for c in CITYSCAPES_CATEGORIES]
    for n in sizes:
        (root / f"gt{n}.json").write_text(json.dumps({"images": images[:n * FRAMES],
                                                      "annotations": gt_annotations[:n * FRAMES],
                                                      "categories": categories}))
        (root / f"pred{n}").mkdir()
        (root / f"pred{n}" / "pan_pred").symlink_to(root / "pred" / "pan_pred")
        (root / f"pred{n}" / "pred.json").write_text(json.dumps({"annotations": pred_annotations[:n * FRAMES]}))
    largest = max(sizes)
    convert.vps_to_table(str(root / f"gt{largest}.json"), str(root / "gt"), str(root / f"gt_table{largest}"))
    convert.vps_to_table(str(root / f"gt{largest}.json"), str(root / "gt"), str(root / f"pred_table{largest}"),
                         str(root / f"pred{largest}"))
    for n in sizes:
        if n == largest:
            continue
        for side in ("gt_table", "pred_table"):
            (root / f"{side}{n}").mkdir()
            (root / f"{side}{n}" / "_categories.json").symlink_to(root / f"{side}{largest}" / "_categories.json")
            for v in range(n):
                (root / f"{side}{n}" / f"video_id={v:06d}").symlink_to(root / f"{side}{largest}" / f"video_id={v:06d}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_evaluate_scale")
    started = time.perf_counter()
    _write_corpus(root, SIZES)
    print(f"\ncorpus of {max(SIZES)} videos written in {time.perf_counter() - started:.0f} s")
    return root


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(script: str, *args: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the process tree, the driver's peak RSS in bytes)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cpu, start = _cpu_of_children(), time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, _cpu_of_children() - cpu
    assert done.returncode == 0, done.stderr[-3000:]
    peak = [line for line in done.stdout.splitlines() if line.startswith("PEAK_KB")]
    return seconds, cpu, int(peak[-1].split()[1]) * 1024


@pytest.mark.benchmark
def test_evaluate_cost_per_video_is_flat(corpus, tmp_path):
    layouts = {
        "json": lambda n: ["--gt-json", str(corpus / f"gt{n}.json"), "--gt-dir", str(corpus / "gt"),
                           "--pred-dir", str(corpus / f"pred{n}")],
        "table": lambda n: ["--gt-table", str(corpus / f"gt_table{n}"), "--pred-table", str(corpus / f"pred_table{n}")],
    }
    figures = {}
    for n in SIZES:
        for layout, inputs in layouts.items():
            out = tmp_path / f"{layout}{n}"
            seconds, cpu, peak = _run(_PEAK, "evaluate", *inputs(n), "--out", str(out), "--no-progress")
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["videos"] == n and metrics["videos_failed"] == 0
            figures[(layout, n)] = (seconds, cpu, peak, metrics["vpq"])
    whole = {n: _run(_WHOLE_FILE, str(corpus / f"gt{n}.json"), str(corpus / "gt"), str(corpus / f"pred{n}"))[2]
             for n in (SIZES[0], SIZES[-1])}

    first, last = SIZES[0], SIZES[-1]
    print(f"\n`tubeflow evaluate`, {FRAMES} annotated 16x12 frames per video, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; wall from process launch to exit, CPU of the process tree; driver peak RSS")
    for layout in layouts:
        base_seconds, base_cpu, base_peak, base_vpq = figures[(layout, first)]
        for n in SIZES:
            seconds, cpu, peak, vpq = figures[(layout, n)]
            growth = f"+{(peak - base_peak) / (n - first) / 1024:6.2f} KiB per added video" if n != first else ""
            print(f"  {layout:5s} {n:6d} videos: {1000 * seconds / n:6.2f} ms/video wall "
                  f"({seconds / n / (base_seconds / first):4.2f}x of {first}), {1000 * cpu / n:6.2f} ms/video CPU "
                  f"({cpu / n / (base_cpu / first):4.2f}x)   peak {peak / 2**20:6.1f} MiB {growth}")
        assert vpq == pytest.approx(figures[("json", last)][3], abs=1e-12)
    per_video_whole = (whole[last] - whole[first]) / (last - first)
    per_video_json = (figures[("json", last)][2] - figures[("json", first)][2]) / (last - first)
    print(f"  baseline, whole-file reading (before): +{per_video_whole / 1024:.2f} KiB per added video "
          f"({whole[first] / 2**20:.0f} -> {whole[last] / 2**20:.0f} MiB); streamed JSON layout "
          f"+{per_video_json / 1024:.2f} KiB: {per_video_whole / max(per_video_json, 1):.1f}x less")
    print("  targets: <= 1.2x per video from 1,000 to 4,000 videos; <= 10 KiB per video")
