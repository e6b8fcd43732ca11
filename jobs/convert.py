"""``tubeflow convert``: the Cityscapes-VPS layout ↔ the segments table, both ways.

    tubeflow convert --gt-json F --gt-dir D --to-table T                 GT → table
    tubeflow convert --gt-json F --pred-dir P --to-table T               predictions → table
    tubeflow convert --table T --to-gt-json F --to-gt-dir D              table → GT layout
    tubeflow convert --table T --to-pred-dir P                           table → submission layout

Predictions need the GT JSON: ``pred.json`` names images, the GT's ``images`` say which
video and frame each one is. Every path may be any fsspec URI.
"""
from __future__ import annotations

import argparse

from operators.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt-json", help="GT JSON (images, annotations, categories)")
    parser.add_argument("--gt-dir", help="directory of the GT panoptic PNGs (to convert the GT)")
    parser.add_argument("--pred-dir", help="predictions to convert: pred.json + pan_pred/")
    parser.add_argument("--to-table", help="write a segments table (Parquet, hive-partitioned by video) here")
    parser.add_argument("--table", help="a segments table to convert into the Cityscapes-VPS layout")
    parser.add_argument("--to-gt-json", help="write the table as GT: this JSON ...")
    parser.add_argument("--to-gt-dir", help="... and the GT PNGs in this directory")
    parser.add_argument("--to-pred-dir", help="write the table as predictions: pred.json + pan_pred/ here")


def run(args: argparse.Namespace) -> int:
    from operators.formats import convert

    if args.to_table:
        if args.table or not args.gt_json or bool(args.gt_dir) == bool(args.pred_dir):
            raise InputError("tubeflow convert", "--to-table takes --gt-json with either --gt-dir (the GT) or "
                                                 "--pred-dir (predictions)")
        summary = convert.vps_to_table(args.gt_json, args.gt_dir, args.to_table, args.pred_dir)
        target = args.to_table
    elif args.table:
        if bool(args.to_pred_dir) == bool(args.to_gt_json or args.to_gt_dir) or \
                bool(args.to_gt_json) != bool(args.to_gt_dir):
            raise InputError("tubeflow convert", "--table takes either --to-gt-json with --to-gt-dir, or --to-pred-dir")
        if args.to_pred_dir:
            summary, target = convert.table_to_predictions(args.table, args.to_pred_dir), args.to_pred_dir
        else:
            summary, target = convert.table_to_gt(args.table, args.to_gt_json, args.to_gt_dir), args.to_gt_json
    else:
        raise InputError("tubeflow convert", "give --to-table (from the Cityscapes-VPS layout) or --table (to it)")
    print(f"{summary.videos} videos, {summary.frames} frames, {summary.segments} segments -> {target}")
    return 0
