"""``tubeflow train``: train the built-in panoptic model on the synthetic corpus with Ray Train.

One ``TorchTrainer`` worker on the CPU by default; ``--workers N --gpu`` runs N data-parallel
GPU workers (DDP through ``ray.train.torch.prepare_model``) on a cluster (``--address``).
The model, losses and sampling are in :mod:`operators.training`, their placement on Ray
Train in :mod:`pipelines.train`; this module parses the options and writes the result: the weights (fp16 state dict, read back
with ``torch.load(weights_only=True)``) and ``<weights>.json`` with the config, the loss
history, the SHA-256 of the weights and, with ``--eval-videos``, PQ on held-out videos.

The shipped weights were made by::

    tubeflow train --out operators/segmentation/weights/panoptic_synth.pt --eval-videos 4

(see operators/segmentation/weights/MODEL_CARD.md for the measured time and PQ).

``tubeflow train --tracker`` trains the learned tracker instead (:mod:`operators.training.tracker_loop`,
in this process on the CPU, one thread; no Ray) and writes its weights (default: the shipped
``operators/association/weights/learned_tracker.pt``) and ``<weights>.json`` (recipe, loss history,
SHA-256, time). The shipped tracker weights were made by::

    tubeflow train --tracker

(see operators/association/weights/MODEL_CARD.md).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

from operators import fs
from operators.segmentation.spec import BUILTIN_WEIGHTS
from operators.training.losses import LossWeights
from operators.training.loop import TRAIN_PRECISIONS, TRAIN_SCENARIOS, TrainConfig
from operators.training.tracker_loop import TrackerTrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--out", default=None, help="weights file to write (any fsspec URI; default: the shipped "
                                                    "weights of the model trained)")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-pairs", type=int, default=d.batch_pairs, help="frame pairs per step and worker")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--warmup", type=int, default=d.warmup, help="linear learning-rate warm-up steps")
    parser.add_argument("--photometric", type=float, default=d.photometric,
                        help="colour jitter strength per frame pair (0 disables it)")
    parser.add_argument("--sigma", type=float, default=d.sigma, help="σ of the center heatmap Gaussians (pixels)")
    parser.add_argument("--head-stride", type=int, default=d.model.head_stride, choices=(2, 4),
                        help="stride of the network's heads")
    parser.add_argument("--semantic-stride", type=int, default=d.model.semantic_stride, choices=(2, 4),
                        help="stride of the semantic head alone (default: the heads' stride)")
    parser.add_argument("--fine-channels", type=int, default=d.model.fine_channels,
                        help="channels of the decoder's stride-2 level (when a head runs at stride 2)")
    parser.add_argument("--widths", type=int, nargs=4, default=list(d.model.widths), metavar=("C4", "C8", "C16", "C32"),
                        help="backbone channels at stride 4, 8, 16 and 32")
    parser.add_argument("--decoder-channels", type=int, default=d.model.decoder_channels,
                        help="channels of the decoder (the heads' input)")
    parser.add_argument("--videos-per-scenario", type=int, default=d.videos_per_scenario)
    parser.add_argument("--frames", type=int, default=d.frames)
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--crop", type=int, nargs=2, default=list(d.crop), metavar=("H", "W"))
    parser.add_argument("--scenarios", nargs="+", default=list(d.scenarios), choices=TRAIN_SCENARIOS)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--contrastive-weight", type=float, default=d.losses.contrastive,
                        help="weight of the SiamTrack segment contrastive loss (0 disables it)")
    parser.add_argument("--dice-weight", type=float, default=d.losses.tube_dice,
                        help="weight of the SiamTrack tube-matching dice loss (0 disables it)")
    parser.add_argument("--offset-weight", type=float, default=d.losses.offset, help="weight of the offset L1 loss")
    parser.add_argument("--balanced-offsets", action=argparse.BooleanOptionalAction, default=d.losses.balanced_offsets,
                        help="average the offset L1 per instance (every instance counts the same), not per pixel")
    parser.add_argument("--semantic-upsample", type=int, default=d.losses.semantic_upsample,
                        help="compute the semantic CE on logits upsampled by this factor (1: at the heads' stride)")
    parser.add_argument("--small-instance-weight", type=float, default=d.losses.small_instance,
                        help="CE weight of pixels of small thing instances (Panoptic-DeepLab: 3)")
    parser.add_argument("--small-instance-area", type=int, default=d.small_instance_area,
                        help="instances under this many pixels are small (Panoptic-DeepLab: 64x64 at 1024x2048)")
    parser.add_argument("--precision", default=d.precision, choices=TRAIN_PRECISIONS,
                        help="forward-pass precision: bf16 autocast (default) or fp32")
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument("--init", default=None, help="continue from these built-in weights (a second stage)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (data parallel)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    parser.add_argument("--eval-videos", type=int, default=0,
                        help="held-out synthetic videos per scenario to measure PQ on after training")
    tracker = parser.add_argument_group("learned tracker (--tracker)")
    t = TrackerTrainConfig()
    tracker.add_argument("--tracker", action="store_true",
                         help="train the learned tracker (operators/association/learned.py) instead of the segmenter")
    tracker.add_argument("--tracker-clips", type=int, default=t.clips, help="synthetic hard-footage clips to train on")
    tracker.add_argument("--tracker-frames", type=int, default=t.frames, help="frames per clip")
    tracker.add_argument("--tracker-epochs", type=int, default=t.epochs)
    tracker.add_argument("--tracker-lr", type=float, default=t.lr)
    tracker.add_argument("--no-overlap-feature", action="store_true",
                         help="ablation: leave out the warped-mask overlap edge feature")
    tracker.add_argument("--no-recurrent", action="store_true", help="ablation: no recurrent track embedding")
    tracker.add_argument("--match-threshold", type=float, default=t.match_threshold,
                         help="minimum match probability of an assignment (stored with the weights)")
    tracker.add_argument("--new-track-threshold", type=float, default=t.new_track_threshold,
                         help="an unmatched segment below this new-track probability is dropped (stored with the weights)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    losses = replace(LossWeights(), contrastive=args.contrastive_weight, tube_dice=args.dice_weight,
                     offset=args.offset_weight, balanced_offsets=args.balanced_offsets,
                     semantic_upsample=args.semantic_upsample, small_instance=args.small_instance_weight)
    return TrainConfig(videos_per_scenario=args.videos_per_scenario, frames=args.frames, height=args.height,
                       width=args.width, seed=args.seed, scenarios=tuple(args.scenarios), steps=args.steps,
                       batch_pairs=args.batch_pairs, crop=tuple(args.crop), lr=args.lr, warmup=args.warmup,
                       photometric=args.photometric, sigma=args.sigma,
                       small_instance_area=args.small_instance_area, log_every=args.log_every, precision=args.precision,
                       model=replace(TrainConfig().model, widths=tuple(args.widths),
                                     decoder_channels=args.decoder_channels, head_stride=args.head_stride,
                                     semantic_stride=args.semantic_stride, fine_channels=args.fine_channels), losses=losses,
                       init=_absolute(args.init))


def _absolute(uri: str | None) -> str | None:
    """Ray workers run in another directory: make a local path absolute, leave URIs alone."""
    return uri if uri is None or "://" in uri else os.path.abspath(uri)


def tracker_config_from_args(args: argparse.Namespace) -> TrackerTrainConfig:
    return TrackerTrainConfig(seed=args.seed, clips=args.tracker_clips, frames=args.tracker_frames,
                              epochs=args.tracker_epochs, lr=args.tracker_lr, recurrent=not args.no_recurrent,
                              overlap=not args.no_overlap_feature, match_threshold=args.match_threshold,
                              new_track_threshold=args.new_track_threshold)


def run_tracker(args: argparse.Namespace) -> int:
    import hashlib

    from operators.association.learned import LEARNED_WEIGHTS
    from operators.training.tracker_loop import train_from_scratch

    config = tracker_config_from_args(args)
    out = args.out or LEARNED_WEIGHTS
    weights, log = train_from_scratch(config, progress=print)
    fs.write_bytes(out, weights)
    log = {"weights": out, "sha256": hashlib.sha256(weights).hexdigest(), "bytes": len(weights), **log}
    fs.write_bytes(out + ".json", json.dumps(log, indent=1).encode())
    print(f"wrote {out} (sha256 {log['sha256'][:12]}…, {len(weights)} bytes) after {log['wall_seconds']} s; "
          f"final loss {log['history'][-1]['loss']:.4f}")
    return 0


def run(args: argparse.Namespace) -> int:
    import hashlib

    from pipelines.train import train_with_ray

    if args.tracker:
        return run_tracker(args)
    args.out = args.out or BUILTIN_WEIGHTS
    config = config_from_args(args)
    started, load_before = time.time(), os.getloadavg()
    weights, history, timings = train_with_ray(config, args.workers, args.gpu, args.cpus_per_worker,
                                                     args.threads, args.address)
    fs.write_bytes(args.out, weights)
    log = {"weights": args.out, "sha256": hashlib.sha256(weights).hexdigest(), "config": config.to_json(),
           "workers": args.workers, "gpu": args.gpu, "threads": args.threads, **timings,
           "wall_seconds": round(time.time() - started, 1),
           # the machine may be shared: its load says how comparable the wall times are
           "load_average_1_5_15min": {"start": [round(x, 2) for x in load_before],
                                      "end": [round(x, 2) for x in os.getloadavg()]},
           "history": history}
    fs.write_bytes(args.out + ".json", json.dumps(log, indent=1).encode())  # kept even if evaluation fails
    if args.eval_videos:
        from operators.training.evaluation import evaluate_builtin

        log["evaluation"] = evaluate_builtin(args.out, videos_per_scenario=args.eval_videos, height=config.height,
                                             width=config.width)
        fs.write_bytes(args.out + ".json", json.dumps(log, indent=1).encode())
    print(f"wrote {args.out} (sha256 {log['sha256'][:12]}…) after {log['wall_seconds']} s; "
          f"final loss {history[-1]['loss']:.4f}")
    if "evaluation" in log:
        print(f"held-out PQ {log['evaluation']['pq']:.1f}")
    return 0
