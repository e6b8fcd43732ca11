"""``tubeflow synth``: write a deterministic synthetic driving-video corpus with GT.

    tubeflow synth --out DIR --videos N --frames T --height H --width W --seed S \
        [--annotate-every 5] [--scenario default|occlusion|similar|small|deform] [--speed 3] [--look-alikes]
        [--format mp4|mcap|bag]
"""
from __future__ import annotations

import argparse
import sys
import time

from operators.errors import InputError
from operators.synth.config import SCENARIOS, SynthConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory or URI (file://, s3://, memory://)")
    parser.add_argument("--videos", type=int, default=2, help="number of videos (default 2)")
    parser.add_argument("--frames", type=int, default=30, help="frames per video (default 30)")
    parser.add_argument("--height", type=int, default=256, help="frame height in pixels (default 256)")
    parser.add_argument("--width", type=int, default=512, help="frame width in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    parser.add_argument("--annotate-every", type=int, default=5,
                        help="frames with frame_index %% N == 0 go into gt/ (every frame goes into gt_all/)")
    parser.add_argument("--scenario", default="default", choices=sorted(SCENARIOS),
                        help="which failure mode to stress (default: default)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the mp4s and of the motion model")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="hard footage: the scene moves SPEED x as far per frame (a frame rate reduced by "
                             "that factor; the mp4s keep --fps)")
    parser.add_argument("--look-alikes", action="store_true",
                        help="hard footage: every instance of a class looks the same")
    parser.add_argument("--no-crowd", action="store_true", help="leave out the crowd (iscrowd=1) segment")
    parser.add_argument("--no-void", action="store_true", help="leave out the VOID hood and clutter")
    parser.add_argument("--format", choices=("mp4", "mcap", "bag"), default="mp4",
                        help="mp4: one file per video; mcap / bag: driving logs (ROS 2 MCAP / ROS 1 bag), two cameras "
                             "per log (JPEG front, raw rgb8 rear) and a speed topic, each on an uneven clock")


def run(args: argparse.Namespace) -> int:
    from operators.synth.corpus import write_corpus

    cfg = SynthConfig(videos=args.videos, frames=args.frames, height=args.height, width=args.width, seed=args.seed,
                      annotate_every=args.annotate_every, scenario=args.scenario, fps=args.fps,
                      crowd=not args.no_crowd, void=not args.no_void, speed=args.speed, look_alikes=args.look_alikes)
    start = time.perf_counter()
    try:
        write_corpus(args.out, cfg, progress=lambda msg: print(f"tubeflow synth: {msg}", file=sys.stderr),
                     video_format=args.format)
    except OSError as exc:  # unwritable directory, full disk, missing bucket
        raise InputError(args.out, f"cannot write the corpus: {exc}") from None
    seconds = time.perf_counter() - start
    total = cfg.videos * cfg.frames
    print(f"wrote {cfg.videos} videos × {cfg.frames} frames ({cfg.width}x{cfg.height}, scenario {cfg.scenario}) "
          f"to {args.out} in {seconds:.1f} s ({seconds / total:.3f} s/frame)")
    return 0
