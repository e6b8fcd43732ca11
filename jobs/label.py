"""``tubeflow label``: label a video corpus with video panoptic segmentation, on Ray Data.

    tubeflow label --input URI --output URI [--address auto] [--segmenter builtin|artifact|precomputed]
                   [--model URI] [--contract auto|panoptic-deeplab|mask-classification|panoptic-map]
                   [--flow dis|raft] [--gt GT_JSON|GT_TABLE] [--chunk-frames N] [--png] [--overlay] [--force]

``--input`` is a directory / bucket prefix of videos (mp4, avi, mkv, mov), frame directories
and driving logs (.mcap, .bag: one video per camera topic), or a manifest (Parquet/CSV:
video_id, uri[, gt, topic]). Outputs under ``--output``:
``segments/`` (Parquet, hive-partitioned by video), ``pan_pred/`` + ``pred.json`` (--png),
``overlays/<video>.avi`` (--overlay), ``review/`` (--review mcap), ``metrics/`` (with --gt), ``run_manifest.json``,
``failures.parquet``. Videos already committed with the same input and config are skipped.
Exit code 0 when every video was labelled (or skipped), 1 when some failed.
"""
from __future__ import annotations

import argparse
import sys

from cluster.connect import EXECUTORS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="corpus: a prefix of videos/frame directories, or a manifest "
                                                       "(.parquet/.csv with video_id, uri[, gt])")
    parser.add_argument("--output", required=True, help="output root (any fsspec URI)")
    add_common_arguments(parser)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``label`` and ``nightly``."""
    from cluster.gpus import GPU_MODES
    from operators.association.config import TRACKER_HELP, TRACKER_METHODS
    from pipelines.label.config import CONTRACTS, DEFAULT_IMAGE_ID, FLOWS, SEGMENTERS

    parser.add_argument("--address", default=None, help="Ray cluster ('auto' inside `ray job submit`, "
                                                        "'ray://host:10001'); default: in-process local Ray")
    parser.add_argument("--segmenter", choices=SEGMENTERS, default="builtin", help="segmentation backend")
    parser.add_argument("--model", default=None, help="weights (builtin; default: shipped), TorchScript/.pt2 "
                                                      "artifact, or predictions dir pred.json+pan_pred (precomputed)")
    parser.add_argument("--contract", choices=("auto", *CONTRACTS), default="auto",
                        help="the artifact's output contract (default: detected from its outputs)")
    parser.add_argument("--object-mask-threshold", type=float, default=0.8,
                        help="mask classification: keep queries scoring above this (default 0.8)")
    parser.add_argument("--overlap-threshold", type=float, default=0.8,
                        help="mask classification: drop a query that wins less than this share of its "
                             "mask (default 0.8)")
    parser.add_argument("--flow", choices=FLOWS, default="dis", help="optical flow backend (default dis, CPU)")
    parser.add_argument("--flow-preset", default="medium", help="DIS preset: ultrafast, fast, medium")
    parser.add_argument("--flow-checkpoint", default=None, help="RAFT checkpoint (with --flow raft)")
    parser.add_argument("--gt", default=None, help="ground truth: evaluate VPQ/STQ in the same pass; a Cityscapes-VPS "
                                                   "GT JSON, or a segments table (a directory: Parquet, "
                                                   "hive-partitioned by video)")
    parser.add_argument("--gt-dir", default=None, help="GT PNG directory of a GT JSON (default: panoptic/ beside it)")
    parser.add_argument("--stride", type=int, default=5, help="GT annotation stride λ for VPQ windows (default 5)")
    parser.add_argument("--image-id-format", default=DEFAULT_IMAGE_ID,
                        help=f"image ids of frames the GT does not name (default {DEFAULT_IMAGE_ID!r})")
    parser.add_argument("--chunk-frames", type=int, default=32, help="frames per chunk (default 32)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="frames per model forward pass (default: 1 on CPU, 8 on GPU)")
    parser.add_argument("--png", action="store_true", help="also write pan_pred/ + pred.json (submission layout)")
    parser.add_argument("--overlay", action="store_true", help="also write overlays/<video>.avi (Motion-JPEG: tracks "
                                                               "coloured, ids, class names, legend, time)")
    parser.add_argument("--review", choices=("mcap",), default=None,
                        help="mcap: also write review/<log>.mcap per log (the labels as an image topic + "
                             "foxglove.ImageAnnotations, stamped like the camera, for Foxglove), a thumbnail per video "
                             "and review/index.html (videos worst first)")
    parser.add_argument("--tracker-config", default=None, help="TrackerConfig as JSON text or a .json file URI")
    parser.add_argument("--tracker", choices=TRACKER_METHODS, default=None,
                        help=TRACKER_HELP + "; overrides the method of --tracker-config")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="horizontal-flip test-time augmentation of the segmenter (default: on for the "
                             "built-in network, off for artifacts); --no-flip halves the network's work")
    parser.add_argument("--shift", action=argparse.BooleanOptionalAction, default=None,
                        help="half-cell shift test-time augmentation of the segmenter (default: on for the "
                             "built-in network, off for artifacts); --no-shift halves the network's work")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                        help="guided refinement of the segmenter's semantic map with the frame's edges (default: "
                             "on for the built-in network, off for artifacts)")
    parser.add_argument("--device", default="auto", help="model device inside an actor: auto (GPU when Ray gives "
                                                         "one), cpu, cuda")
    parser.add_argument("--gpus", choices=GPU_MODES, default="auto",
                        help="what the model actors ask Ray for: gpu (one GPU each, whatever the cluster has now: "
                             "an autoscaler adds GPU nodes), cpu (none), auto (default: GPUs when the cluster has "
                             "them or its autoscaler can launch them)")
    parser.add_argument("--segment-actors", type=int, default=None, help="most segmentation actors (default: the "
                                                                         "GPUs the cluster can have, else 3/4 of "
                                                                         "the CPUs)")
    parser.add_argument("--flow-actors", type=int, default=None, help="most flow actors (default CPUs/4)")
    parser.add_argument("--association-actors", type=int, default=None, help="association actors (default CPUs/2)")
    parser.add_argument("--window-videos", type=int, default=None,
                        help="videos per execution of the Ray Data graph, each run in a sub-driver process that "
                             "exits with its window, so the driver's memory does not grow with the executions (default: "
                             "64 per cluster CPU, 256 to 2048; 0: a pass in one execution)")
    parser.add_argument("--executor", choices=EXECUTORS, default="auto",
                        help="what runs the stages: ray (the Ray Data graph), local (processes of this machine, no "
                             "Ray's start-up), auto (default: local for at most 64 videos to label without --address on a "
                             "machine without GPUs, else ray); the outputs are the same")
    parser.add_argument("--force", action="store_true", help="reprocess videos that are already committed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--keep-cache", action="store_true",
                        help="keep the local copies of remote videos after the run (default: removed; they live in a "
                             "private directory per run under TUBEFLOW_CACHE, ~/.cache/tubeflow)")


def tracker_config_from_option(value: str, option: str):
    """A TrackerConfig from an option's JSON text or file; one InputError naming the file (or
    the option) and the problem for a missing file, bad JSON, an unknown field, a wrong type or
    a value out of range."""
    from operators import fs
    from operators.association import TrackerConfig
    from operators.errors import InputError

    inline = value.lstrip().startswith("{")
    where = option if inline else value
    try:
        text = value if inline else fs.read_input(value).decode("utf-8")
        return TrackerConfig.from_json(text)
    except InputError as exc:
        raise InputError(f"{option} {exc.where}", exc.problem) from None
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise InputError(where, f"invalid tracker config: {exc}") from None


def config_from_args(args: argparse.Namespace):
    from operators.association import TrackerConfig
    from pipelines.label.config import LabelConfig, StageResources

    tracker = TrackerConfig()
    if args.tracker_config:
        tracker = tracker_config_from_option(args.tracker_config, "--tracker-config")
    if args.tracker:
        from dataclasses import replace

        tracker = replace(tracker, method=args.tracker)
    flow_options = {"checkpoint": args.flow_checkpoint} if args.flow == "raft" else {"preset": args.flow_preset}
    try:
        resources = StageResources(segment_actors=args.segment_actors, flow_actors=args.flow_actors,
                                   association_actors=args.association_actors, gpus=args.gpus,
                                   executor=args.executor, window_videos=args.window_videos)
        return LabelConfig(segmenter=args.segmenter, model=args.model, flow=args.flow, flow_options=flow_options,
                           tracker=tracker, gt_json=args.gt, gt_dir=args.gt_dir, stride=args.stride,
                           image_id_format=args.image_id_format, chunk_frames=args.chunk_frames,
                           batch_size=args.batch_size, flip=args.flip, shift=args.shift, refine=args.refine,
                           contract=None if args.contract == "auto" else args.contract,
                           object_mask_threshold=args.object_mask_threshold,
                           overlap_threshold=args.overlap_threshold,
                           write_png=args.png, write_overlay=args.overlay, review=args.review, device=args.device,
                           resources=resources)
    except ValueError as exc:
        from operators.errors import InputError

        raise InputError("tubeflow label options", str(exc)) from None


def report(run, command: str) -> int:
    """Print the summary table and failures; the exit code."""
    from operators.ids import printable
    from pipelines.label import summary_table

    print(summary_table(run))
    for failed in run.failed:
        print(f"tubeflow {command}: failed: video {printable(failed.video_id)} ({failed.stage}): "
              f"{printable(failed.error)}", file=sys.stderr)
    if run.failed:
        print(f"tubeflow {command}: {len(run.failed)} of {len(run.results)} videos failed; the others are "
              "committed", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    from pipelines.label import label

    result = label(args.input, args.output, config_from_args(args), address=args.address, force=args.force,
                   progress=not args.no_progress, keep_cache=args.keep_cache)
    return report(result, "label")
