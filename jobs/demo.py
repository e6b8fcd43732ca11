"""``tubeflow demo``: the product end to end on a synthetic driving corpus, on a local Ray.

The demo is a script of the same ``tubeflow`` commands a user runs, each printed before it
runs, so the output doubles as a tutorial:

1. ``tubeflow synth`` writes a small synthetic corpus (frames, mp4s, GT panoptic, GT flow).
2. ``tubeflow label`` — the main job — labels the corpus's mp4s with the built-in panoptic
   model, DIS flow and the tracker on Ray Data, writes the segments table, PNGs and overlay
   videos, and scores VPQ/STQ against the GT in the same pass.
3. The tracker on its own: per-frame panoptic predictions whose ids change every frame are
   made from the GT with realistic noise (eroded/dilated masks, missed and spurious
   segments; :mod:`operators.synth.perturb`), ``tubeflow track`` gives them identities, and
   ``tubeflow evaluate`` scores both: VPQ at k > 0 counts identities over time, so it shows
   what association is worth, apart from the segmenter's quality.
"""
from __future__ import annotations

import argparse
import json
import shlex

import numpy as np

from operators import fs
from operators.errors import InputError
from operators.formats.vps_layout import PredictionWriter, read_ground_truth
from operators.synth.perturb import NoiseConfig, VideoPerturbation

# 256x512 is the resolution the built-in model was trained at.
SYNTH_IMAGE_ID = "{video_id}_{frame_index:04d}_synth"  # image ids of the synthetic corpus's GT
DEMO_CORPUS = dict(videos=3, frames=20, height=256, width=512, seed=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="working directory of the demo (local path or URI)")
    parser.add_argument("--videos", type=int, default=DEMO_CORPUS["videos"])
    parser.add_argument("--frames", type=int, default=DEMO_CORPUS["frames"])
    parser.add_argument("--height", type=int, default=DEMO_CORPUS["height"])
    parser.add_argument("--width", type=int, default=DEMO_CORPUS["width"])
    parser.add_argument("--seed", type=int, default=DEMO_CORPUS["seed"])
    hard = parser.add_argument_group("hard footage", "the generator's and the per-frame predictions' knobs "
                                     "(operators/synth/footage.py has the benchmark's levels)")
    hard.add_argument("--speed", type=float, default=1.0,
                      help="the scene moves SPEED x as far per frame (frame-rate reduction)")
    hard.add_argument("--look-alikes", action="store_true", help="every instance of a class looks the same")
    noise = NoiseConfig()
    hard.add_argument("--miss-run-prob", type=float, default=noise.miss_run_prob,
                      help="per frame, chance that a visible object starts a run of missed detections")
    hard.add_argument("--miss-run-max", type=int, default=noise.miss_run_max,
                      help="longest run of missed detections, frames (0: no runs)")
    hard.add_argument("--drop-prob", type=float, default=noise.drop_prob, help="single-frame miss probability")
    hard.add_argument("--spurious-per-frame", type=float, default=noise.spurious_per_frame,
                      help="false thing segments per frame (Poisson mean)")
    hard.add_argument("--class-flip-prob", type=float, default=noise.class_flip_prob,
                      help="chance that a segment takes a confusable class (car/truck/bus, person/rider, …) for a frame")


def noise_from_args(args: argparse.Namespace) -> NoiseConfig:
    """The perturbation the demo's per-frame predictions get (``--miss-run-*``, ``--drop-prob``, …)."""
    try:
        return NoiseConfig(drop_prob=args.drop_prob, spurious_per_frame=args.spurious_per_frame,
                           class_flip_prob=args.class_flip_prob, miss_run_prob=args.miss_run_prob,
                           miss_run_max=args.miss_run_max)
    except ValueError as exc:
        raise InputError("tubeflow demo", str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from jobs.cli import main as tubeflow

    out = str(args.out).rstrip("/")
    corpus, labels = fs.join(out, "corpus"), fs.join(out, "labels")
    perframe, tracked = fs.join(out, "perframe"), fs.join(out, "tracked")

    def step(*argv: str) -> None:
        print(f"\n$ tubeflow {shlex.join(argv)}", flush=True)
        code = tubeflow(list(argv))
        if code:
            raise SystemExit(code)

    noise = noise_from_args(args)
    step("synth", "--out", corpus, "--videos", str(args.videos), "--frames", str(args.frames),
         "--height", str(args.height), "--width", str(args.width), "--seed", str(args.seed),
         "--speed", str(args.speed), *(["--look-alikes"] if args.look_alikes else []))

    gt_json = fs.join(corpus, "gt", "panoptic_gt.json")
    # no Ray: a corpus this small is labelled and evaluated by processes of this machine
    # (label and evaluate choose that themselves: --executor auto), without Ray's start-up
    step("label", "--input", fs.join(corpus, "videos"), "--output", labels, "--gt", gt_json,
         "--image-id-format", SYNTH_IMAGE_ID, "--png", "--overlay", "--force", "--no-progress")
    _track_and_compare(corpus, perframe, tracked, out, args.seed, step, noise)
    print_comparison({"label (built-in model)": fs.join(labels, "metrics"),
                      "per-frame ids": fs.join(out, "eval_perframe"), "tracked": fs.join(out, "eval_tracked")})
    print(f"\nreports: {fs.join(labels, 'metrics', 'report.html')}, {fs.join(out, 'eval_tracked', 'report.html')}")
    print(f"overlay videos: {fs.join(labels, 'overlays')}")
    return 0


def _track_and_compare(corpus: str, perframe: str, tracked: str, out: str, seed: int, step,
                       noise: NoiseConfig = NoiseConfig()) -> None:
    print(f"\n# per-frame predictions (ids change every frame, noisy masks) -> {perframe}", flush=True)
    write_perframe_predictions(fs.join(corpus, "gt_all", "panoptic_gt.json"), fs.join(corpus, "gt_all", "panoptic"),
                               perframe, seed=seed, noise=noise)

    step("track", "--images", fs.join(corpus, "frames"), "--perframe-json", fs.join(perframe, "pred.json"),
         "--perframe-dir", fs.join(perframe, "pan_pred"), "--out", tracked,
         "--only-annotated", fs.join(corpus, "gt", "panoptic_gt.json"))

    gt = ["--gt-json", fs.join(corpus, "gt", "panoptic_gt.json"), "--gt-dir", fs.join(corpus, "gt", "panoptic")]
    step("evaluate", *gt, "--pred-dir", perframe, "--out", fs.join(out, "eval_perframe"), "--no-progress")
    step("evaluate", *gt, "--pred-dir", tracked, "--out", fs.join(out, "eval_tracked"), "--no-progress")


def write_perframe_predictions(gt_json: str, gt_dir: str, out: str, seed: int = 0,
                               noise: NoiseConfig = NoiseConfig()) -> int:
    """Write noisy per-frame predictions of every GT frame in the submission layout; returns
    the number of frames. Deterministic by ``seed``. Each video's frames go through one
    :class:`VideoPerturbation` in frame order (runs of misses follow an object)."""
    gt = read_ground_truth(gt_json, gt_dir)
    things = {c.id for c in gt.categories.values() if c.isthing}
    rng = np.random.default_rng(seed)
    count = 0
    with PredictionWriter(out) as writer:
        for images in gt.videos().values():
            perturb = VideoPerturbation(rng, things, noise)
            for image in images:  # in frame order
                writer.add(image.id, perturb(gt.read_frame(image)))
                count += 1
    return count


def print_comparison(reports: dict[str, str]) -> None:
    """One table row per evaluated prediction set, as in the papers: VPQ per k, then STQ."""
    rows = {name: json.loads(fs.read_bytes(fs.join(uri, "metrics.json"))) for name, uri in reports.items()}
    first = next(iter(rows.values()))
    ks = sorted(int(k) for k in first["per_k"])
    header = f"{'':24}" + "".join(f"  VPQ k={k:<3}" for k in ks) + "      VPQ   VPQ-Th   VPQ-St      STQ"
    print("\n" + header)
    for name, m in rows.items():
        per_k = "".join(f"  {100 * m['per_k'][str(k)]['vpq']:9.1f}" for k in ks)
        print(f"{name:24}{per_k}  {100 * m['vpq']:7.1f}  {100 * m['vpq_thing']:7.1f}  "
              f"{100 * m['vpq_stuff']:7.1f}  {100 * m['stq']:7.1f}")
