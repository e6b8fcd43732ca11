"""The learned tracker against the hybrid tracker: quality on hard and easy footage, and speed.

Quality (``--quality``, the default): every tracker gets the same per-frame segments and DIS
flow; scores by tubeflow's VPQ, VPQ-Th at k = 15, STQ and ID switches per 100 GT tracks
(:func:`operators.metrics.tracking.score_videos`, annotated frames every 5th).

* *hard*: the peer benchmark's sets (``bench_association_peers.load_videos``: 3× and 6× speed,
  runs of misses, spurious blobs, class flips, look-alikes; 6 videos × 31 frames at 256×512);
* *easy*: the association quality harness's corpus (``tests/test_association_quality.py``:
  4 videos × 31 frames at 128×256, seed 7) with its *noisy* per-frame segmentation
  (``operators.synth.perturb.perturb_frame``), per scenario.

Rows (``--trackers``): the oracle (true ids), ``hybrid``, ``learned`` (shipped weights),
``assisted``, ``composite`` and any ``--variant NAME=WEIGHTS`` (the ablation's networks);
``--seed 101,102,…`` runs several seeds and prints their means too. ms/frame is the wall time of
``update``.

Speed (``--speed``): ``update`` per frame at 1024×2048 with 40 segments, flow given — the video
of ``bench_association.py`` — for the hybrid and the learned tracker in the same run (best CPU
time of ``--repeats`` runs per frame, one thread), and their ratio; with ``--baseline REV`` also
the tracker code (``operators/``) of git revision REV, each run in its own process and the two
codes' runs interleaved, and the ratios before / after::

    PYTHONPATH=. python tests/benchmarks/bench_learned_tracker.py --speed --baseline d9083f8 --repeats 5
    PYTHONPATH=. python tests/benchmarks/bench_learned_tracker.py --seed 7 --sets 3x,6x,default,occlusion \\
        --variant "no overlap=/tmp/no_overlap.pt"
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_association_peers import VideoInput, evaluate_method, load_videos, run_oracle, run_tubeflow  # noqa: E402
from operators.association import TrackerConfig  # noqa: E402
from operators.association.methods import make_tracker  # noqa: E402
from operators.synth.footage import HARD_LEVELS, FootageFrame  # noqa: E402

EASY_CORPUS = dict(videos=4, frames=31, height=128, width=256, seed=7, annotate_every=5)


def easy_videos(scenario: str, seed: int) -> list[VideoInput]:
    """The quality harness's corpus with its noisy segmentation (the same rng per video) and DIS flow."""
    from operators.flow.dis import DisFlow
    from operators.formats.categories import CITYSCAPES_THING_IDS
    from operators.synth import SynthConfig, generate_video
    from operators.synth.perturb import perturb_frame

    cfg = SynthConfig(**dict(EASY_CORPUS, seed=seed, scenario=scenario))
    dis, out = DisFlow("medium"), []
    for v in range(cfg.videos):
        rng = np.random.default_rng(1000 + v)
        frames = [FootageFrame(f.frame_index, f.rgb, f.panoptic, perturb_frame(f.panoptic, rng, set(CITYSCAPES_THING_IDS)),
                               f.flow) for f in generate_video(cfg, v)]
        out.append(VideoInput(frames, [None] + [dis(b.rgb, a.rgb) for a, b in zip(frames, frames[1:])]))
    return out


def run_config(config: TrackerConfig):
    return lambda video: run_tubeflow(video, config)


TRACKER_ROWS = {"oracle": ("oracle (true ids)", run_oracle)}


def quality(sets: list[str], seeds: list[int], variants: dict[str, str], hard_videos: int,
            trackers: list[str]) -> None:
    """One row per (set, seed, tracker); with several seeds also the mean over them per (set, tracker)."""
    methods = {}
    for name in trackers:
        methods.update([TRACKER_ROWS[name]] if name in TRACKER_ROWS else [(name, run_config(TrackerConfig(method=name)))])
    for name, path in variants.items():
        methods[name] = run_config(TrackerConfig(method="learned", learned_weights=path))
    print(f"seeds {','.join(map(str, seeds))}; hard: {hard_videos} videos × 31 frames, 256x512; easy: "
          f"{dict(EASY_CORPUS, seed='S')} noisy; DIS flow")
    print("| set | seed | tracker | VPQ | VPQ-Th k=15 | STQ (AQ) | ID sw. / 100 tracks | ms/frame |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in sets:
        rows: dict[str, list[tuple[float, ...]]] = {method: [] for method in methods}
        for seed in seeds:
            if name in HARD_LEVELS:
                level = HARD_LEVELS[name]
                videos, label = load_videos(level, seed, hard_videos), f"hard {name}, misses ≤ {level.miss_run_max}"
            else:
                videos, label = easy_videos(name, seed), f"easy {name} (noisy)"
            for method, run in methods.items():
                score, ms = evaluate_method(run, videos)
                row = (score.vpq, score.vpq_th_k[15], score.stq, score.aq, score.idsw_per_100, ms)
                rows[method].append(row)
                print(_row(label, str(seed), method, row), flush=True)
        if len(seeds) > 1:
            for method, values in rows.items():
                print(_row(label, "mean", method, tuple(np.mean(values, axis=0))), flush=True)


def _row(label: str, seed: str, method: str, row: tuple[float, ...]) -> str:
    vpq, th15, stq, aq, idsw, ms = row
    return f"| {label} | {seed} | {method} | {vpq:.2f} | {th15:.2f} | {stq:.2f} ({aq:.2f}) | {idsw:.1f} | {ms:.1f} |"


@functools.lru_cache(maxsize=1)
def _speed_video(frames: int, height: int, width: int) -> list:
    from bench_association import make_video

    return make_video(frames, height, width)


def _time_trackers(frames: int, height: int, width: int) -> dict[str, list[list[float]]]:
    """One run of each tracker over the speed video: {tracker: [[wall s, CPU s] per frame]}."""
    import cv2
    import torch

    from operators.association import TrackerConfig
    from operators.association.config import TRACKER_METHODS
    from operators.association.methods import make_tracker

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    video = _speed_video(frames, height, width)
    out = {}
    # a baseline revision may predate the assisted tracker
    for name in [m for m in ("hybrid", "learned", "assisted", "composite") if m in TRACKER_METHODS]:
        config = TrackerConfig(method=name)
        tracker, times = make_tracker("bench", config), []
        for frame in video:
            wall, cpu = time.perf_counter(), time.process_time()
            tracker.update(frame)
            times.append([time.perf_counter() - wall, time.process_time() - cpu])
        out[name] = times
    out["segments"] = statistics.mean(len(f.panoptic.segments) for f in video)
    out["code"] = str(Path(sys.modules[make_tracker.__module__].__file__).resolve().parents[2])
    return out


def _code_of(ref: str, into: Path) -> Path:
    """The tracker code (``operators/``) of git revision ``ref``, unpacked under ``into``."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref, "operators"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _worker(code: Path, frames: int, height: int, width: int) -> dict:
    """:func:`_time_trackers` in a fresh process that imports the tracker from ``code``."""
    import json
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), str(Path(__file__).resolve().parents[2])]))
    done = subprocess.run([sys.executable, __file__, "--speed-worker", str(code), "--frames", str(frames),
                           "--height", str(height), "--width", str(width)],
                          env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed(frames: int, height: int, width: int, repeats: int, baseline: str | None) -> None:
    """Per-frame ``update`` time of both trackers, best of ``repeats`` runs per frame; with
    ``baseline`` (a git revision), the same for that revision's tracker code, the two codes' runs
    interleaved (one process per run) so that the machine's load hits both alike."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        codes = {"this tree": Path(__file__).resolve().parents[2]}
        if baseline:
            codes = {f"baseline {baseline}": _code_of(baseline, Path(tmp)), **codes}
        best: dict[tuple[str, str], np.ndarray] = {}
        for _ in range(repeats):
            for label, code in codes.items():
                run = _worker(code, frames, height, width) if baseline else _time_trackers(frames, height, width)
                segments, ran = run.pop("segments"), run.pop("code")
                if Path(ran) != code.resolve():
                    raise RuntimeError(f"the {label} run imported the tracker from {ran}, not {code}")
                for name, times in run.items():
                    key = (label, name)
                    best[key] = np.minimum(best.get(key, np.inf), np.array(times).T)
    print(f"association at {height}x{width}, {segments:.1f} segments/frame, {frames - 1} frames "
          f"(best of {repeats} runs each), one thread; median over frames of the best CPU (wall) time")
    medians = {key: [statistics.median(row[1:].tolist()) * 1000 for row in times] for key, times in best.items()}
    for (label, name), (wall, cpu) in medians.items():
        print(f"  {label:22s} {name:8s} {cpu:7.2f} ms/frame CPU ({wall:7.2f} wall)")
    for label in codes:
        for name in ("learned", "assisted", "composite"):
            if (label, name) in medians:
                ratio = medians[(label, name)][1] / medians[(label, "hybrid")][1]
                print(f"  {label}: {name} / hybrid {ratio:.2f}x CPU")
    if baseline:
        for name in ("hybrid", "learned"):
            before, after = medians[(f"baseline {baseline}", name)][1], medians[("this tree", name)][1]
            print(f"  {name}: baseline / this tree {before / after:.2f}x CPU ({before:.2f} → {after:.2f} ms/frame)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speed", action="store_true", help="time update at 1024x2048 with 40 segments instead")
    parser.add_argument("--seed", default="7", help="a seed, or several comma-separated (then also their means)")
    parser.add_argument("--trackers", default="oracle,hybrid,learned,assisted,composite",
                        help="rows: oracle and TrackerConfig.method names, comma-separated")
    parser.add_argument("--sets", default="3x,6x,default,occlusion,similar")
    parser.add_argument("--hard-videos", type=int, default=6)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=WEIGHTS")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="GIT_REV",
                        help="with --speed: also time the tracker code of this revision, interleaved")
    parser.add_argument("--speed-worker", metavar="CODE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.speed_worker:  # one timing run in this process (PYTHONPATH puts CODE first), as JSON
        import json

        print(json.dumps(_time_trackers(args.frames, args.height, args.width)))
        return
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if args.speed:
        speed(args.frames, args.height, args.width, args.repeats, args.baseline)
        return
    variants = dict(v.split("=", 1) for v in args.variant)
    quality(args.sets.split(","), [int(x) for x in args.seed.split(",")], variants, args.hard_videos,
            args.trackers.split(","))


@pytest.mark.benchmark
def test_learned_tracker_speed():
    """Collected by ``make bench``: the speed table (the quality table takes minutes)."""
    main(["--speed"])


if __name__ == "__main__":
    main()
