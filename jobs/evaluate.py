"""``tubeflow evaluate``: VPQ, PQ and STQ of predictions in the Cityscapes-VPS layout.

    tubeflow evaluate --gt-json F --gt-dir D --pred-dir P --out O [--address auto]
                      [--allow-missing] [--stride 5]

Inputs and output may be any fsspec URI. Exit code 0 when every video was scored, 1 when
some video failed (the failures are listed on stderr and in ``O/metrics.json``; the others
are scored all the same).
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt-json", required=True, help="GT JSON (images, annotations, categories)")
    parser.add_argument("--gt-dir", required=True, help="directory of the GT panoptic PNGs")
    parser.add_argument("--pred-dir", required=True, help="predictions: pred.json + pan_pred/")
    parser.add_argument("--out", required=True, help="output directory: metrics.json, per_class.parquet, "
                                                     "per_video.parquet, report.html")
    parser.add_argument("--address", default=None, help="Ray cluster to join ('auto', 'ray://host:10001'); "
                                                        "default: an in-process local Ray")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score a GT frame without prediction as empty (all FN) instead of failing its video")
    parser.add_argument("--stride", type=int, default=5, help="annotation stride λ: windows have k/λ + 1 annotated "
                                                              "frames (default 5, as Cityscapes-VPS)")
    parser.add_argument("--ks", default="0,5,10,15", help="window sizes k, comma separated (default 0,5,10,15)")
    parser.add_argument("--gt-area", choices=("summed", "legacy"), default="summed",
                        help="GT tube area: 'summed' over the window, as the paper and the benchmark evaluator "
                             "(default); 'legacy' re-adds areas across windows as the evaluator's first release "
                             "did (see README)")
    parser.add_argument("--stq-ignore-label", type=int, default=255,
                        help="STQ semantic label of VOID pixels (default 255, outside the classes)")
    parser.add_argument("--videos-per-task", type=int, default=1, help="videos per Ray task (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pipelines.evaluate import evaluate

    from operators.errors import InputError

    try:
        ks = [int(k) for k in str(args.ks).split(",") if k.strip()]
    except ValueError:
        raise InputError("--ks", f"expected comma-separated integers, got {args.ks!r}") from None
    if args.stride < 1 or not ks or any(k < 0 or k % args.stride for k in ks):
        raise InputError("--ks", f"every window k must be a multiple of --stride {args.stride} (k/λ + 1 annotated "
                                 f"frames), got {ks}")
    if args.stq_ignore_label < 0:
        raise InputError("--stq-ignore-label", f"must be a non-negative semantic label, got {args.stq_ignore_label}")
    report = evaluate(args.gt_json, args.gt_dir, args.pred_dir, args.out, address=args.address,
                      allow_missing=args.allow_missing, stride=args.stride, ks=ks, gt_area=args.gt_area,
                      stq_ignore_label=args.stq_ignore_label, videos_per_task=args.videos_per_task,
                      progress=not args.no_progress)
    vpq = report.vpq
    print(f"VPQ {100 * vpq.vpq:.2f}  VPQ-Th {100 * vpq.vpq_thing:.2f}  VPQ-St {100 * vpq.vpq_stuff:.2f}  "
          f"STQ {100 * report.stq['STQ']:.2f}  ({len(report.videos)} videos) -> {args.out}")
    for warning in report.warnings:
        print(f"tubeflow evaluate: warning: {warning}", file=sys.stderr)
    for video in report.failures:
        print(f"tubeflow evaluate: failed: {video.error}", file=sys.stderr)
    if report.failures:
        print(f"tubeflow evaluate: {len(report.failures)} of {len(report.videos)} videos failed; "
              "the metrics cover the others", file=sys.stderr)
        return 1
    return 0
