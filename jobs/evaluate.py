"""``tubeflow evaluate``: VPQ, PQ and STQ of predictions against a GT, each in the
Cityscapes-VPS layout or as a segments table.

    tubeflow evaluate (--gt-json F --gt-dir D | --gt-table T) (--pred-dir P | --pred-table T)
                      --out O [--executor auto|local|ray] [--workers N] [--address auto]
                      [--allow-missing] [--stride 5]

Inputs and output may be any fsspec URI. Exit code 0 when every video was scored, 1 when
some video failed (the failures are listed on stderr and in ``O/metrics.json``; the others
are scored all the same).
"""
from __future__ import annotations

import argparse
import sys

from cluster.connect import EXECUTORS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt-json", help="GT JSON (images, annotations, categories)")
    parser.add_argument("--gt-dir", help="directory of the GT panoptic PNGs")
    parser.add_argument("--gt-table", help="the GT as a segments table (Parquet, hive-partitioned by video), "
                                           "instead of --gt-json/--gt-dir")
    parser.add_argument("--pred-dir", help="predictions: pred.json + pan_pred/")
    parser.add_argument("--pred-table", help="predictions as a segments table, instead of --pred-dir")
    parser.add_argument("--out", required=True, help="output directory: metrics.json, per_class.parquet, "
                                                     "per_video.parquet, report.html")
    parser.add_argument("--address", default=None, help="Ray cluster to join ('auto', 'ray://host:10001'); "
                                                        "implies --executor ray")
    parser.add_argument("--executor", choices=EXECUTORS, default="auto",
                        help="where the videos are scored: 'local' (this process or a process pool), 'ray' (Ray "
                             "tasks: --address, or a local Ray); 'auto' (default): Ray with --address / RAY_ADDRESS "
                             "or above 20,000 videos, else local")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes of the local executor (default: the CPU cores; 1: this process)")
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
    parser.add_argument("--videos-per-task", type=int, default=None,
                        help="videos per task (default: about 8 tasks per worker, at most 64 videos each)")
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
    report = evaluate(args.gt_json, args.gt_dir, args.pred_dir, args.out, gt_table=args.gt_table,
                      pred_table=args.pred_table, address=args.address, executor=args.executor, workers=args.workers,
                      allow_missing=args.allow_missing, stride=args.stride, ks=ks, gt_area=args.gt_area,
                      stq_ignore_label=args.stq_ignore_label, videos_per_task=args.videos_per_task,
                      progress=not args.no_progress)
    vpq = report.vpq
    print(f"VPQ {100 * vpq.vpq:.2f}  VPQ-Th {100 * vpq.vpq_thing:.2f}  VPQ-St {100 * vpq.vpq_stuff:.2f}  "
          f"STQ {100 * report.stq['STQ']:.2f}  ({report.video_count} videos) -> {args.out}")
    for warning in report.warnings:
        print(f"tubeflow evaluate: warning: {warning}", file=sys.stderr)
    for video in report.failures:
        print(f"tubeflow evaluate: failed: {video.error}", file=sys.stderr)
    if report.failures:
        print(f"tubeflow evaluate: {len(report.failures)} of {report.video_count} videos failed; "
              "the metrics cover the others", file=sys.stderr)
        return 1
    return 0
