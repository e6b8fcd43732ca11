"""The learned tracker against the hybrid tracker: quality on hard and easy footage, and speed.

Quality (``--quality``, the default): every tracker gets the same per-frame segments and DIS
flow; scores by tubeflow's VPQ, VPQ-Th at k = 15, STQ and ID switches per 100 GT tracks
(:func:`operators.metrics.tracking.score_videos`, annotated frames every 5th).

* *hard*: the peer benchmark's sets (``bench_association_peers.load_videos``: 3× and 6× speed,
  runs of misses, spurious blobs, class flips, look-alikes; 6 videos × 31 frames at 256×512);
* *easy*: the association quality harness's corpus (``tests/test_association_quality.py``:
  4 videos × 31 frames at 128×256, seed 7) with its *noisy* per-frame segmentation
  (``operators.synth.perturb.perturb_frame``), per scenario.

Rows: the oracle (true ids), ``hybrid`` (defaults), ``learned`` (shipped weights) and any
``--variant NAME=WEIGHTS`` (the ablation's networks). ms/frame is the wall time of ``update``.

Speed (``--speed``): ``update`` per frame at 1024×2048 with 40 segments, flow given — the video
of ``bench_association.py`` — for the hybrid and the learned tracker in the same run (best of
3 runs per frame, one thread), and their ratio::

    PYTHONPATH=. python tests/benchmarks/bench_learned_tracker.py --speed
    PYTHONPATH=. python tests/benchmarks/bench_learned_tracker.py --seed 7 --sets 3x,6x,default,occlusion \\
        --variant "no overlap=/tmp/no_overlap.pt"
"""
from __future__ import annotations

import argparse
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
from operators.association.learned import make_tracker  # noqa: E402
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


def quality(sets: list[str], seed: int, variants: dict[str, str], hard_videos: int) -> None:
    methods = {"oracle (true ids)": run_oracle, "hybrid": run_config(TrackerConfig()),
               "learned": run_config(TrackerConfig(method="learned"))}
    for name, path in variants.items():
        methods[name] = run_config(TrackerConfig(method="learned", learned_weights=path))
    print(f"seed {seed}; hard: {hard_videos} videos × 31 frames, 256x512; easy: {dict(EASY_CORPUS, seed=seed)} noisy; "
          "DIS flow")
    print("| set | tracker | VPQ | VPQ-Th k=15 | STQ | ID sw. / 100 tracks | ms/frame |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in sets:
        if name in HARD_LEVELS:
            level = HARD_LEVELS[name]
            videos, label = load_videos(level, seed, hard_videos), f"hard {name}, misses ≤ {level.miss_run_max}"
        else:
            videos, label = easy_videos(name, seed), f"easy {name} (noisy)"
        for method, run in methods.items():
            score, ms = evaluate_method(run, videos)
            print(f"| {label} | {method} | {score.vpq:.1f} | {score.vpq_th_k[15]:.1f} | {score.stq:.1f} | "
                  f"{score.idsw_per_100:.1f} | {ms:.1f} |", flush=True)


def speed(frames: int, height: int, width: int, repeats: int) -> None:
    import cv2
    import torch

    from bench_association import make_video

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    video = make_video(frames, height, width)
    n_segments = statistics.mean(len(f.panoptic.segments) for f in video)
    medians = {}
    for name, config in (("hybrid", TrackerConfig()), ("learned", TrackerConfig(method="learned"))):
        best = np.full((2, len(video)), np.inf)   # wall, CPU time of the process
        for _ in range(repeats):
            tracker = make_tracker("bench", config)
            for t, frame in enumerate(video):
                wall, cpu = time.perf_counter(), time.process_time()
                tracker.update(frame)
                best[:, t] = np.minimum(best[:, t], [time.perf_counter() - wall, time.process_time() - cpu])
        medians[name] = [statistics.median(row[1:].tolist()) for row in best]
    print(f"association at {height}x{width}, {n_segments:.1f} segments/frame, {len(video) - 1} frames "
          f"(best of {repeats} runs each), one thread")
    for name, (wall, cpu) in medians.items():
        print(f"  {name:8s} update median {wall * 1000:8.2f} ms/frame wall, {cpu * 1000:8.2f} ms/frame CPU")
    print(f"  ratio learned / hybrid: {medians['learned'][0] / medians['hybrid'][0]:.2f}x wall, "
          f"{medians['learned'][1] / medians['hybrid'][1]:.2f}x CPU")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speed", action="store_true", help="time update at 1024x2048 with 40 segments instead")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sets", default="3x,6x,default,occlusion,similar")
    parser.add_argument("--hard-videos", type=int, default=6)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=WEIGHTS")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if args.speed:
        speed(args.frames, args.height, args.width, args.repeats)
        return
    variants = dict(v.split("=", 1) for v in args.variant)
    quality(args.sets.split(","), args.seed, variants, args.hard_videos)


@pytest.mark.benchmark
def test_learned_tracker_speed():
    """Collected by ``make bench``: the speed table (the quality table takes minutes)."""
    main(["--speed"])


if __name__ == "__main__":
    main()
