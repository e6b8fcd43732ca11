"""``tubeflow nightly``: reprocess only what changed, then re-aggregate over the whole output.

    tubeflow nightly --input URI --output URI [same options as label]

Videos are compared with their commit markers by input fingerprint (size, mtime, ETag from
the filesystem; no decoding) and config hash: new or changed videos are labelled, the
others skipped. Then ``pred.json`` (with --png) and ``metrics/`` (with --gt) are rebuilt
over *every* committed video under ``--output``, including videos of earlier nights that are
no longer in ``--input``. Meant for a CronJob (see cluster/); safe to rerun after a crash.
"""
from __future__ import annotations

import argparse

from jobs.label import add_common_arguments, config_from_args, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="corpus prefix or manifest (as for label)")
    parser.add_argument("--output", required=True, help="output root shared by every night")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipelines.nightly import nightly

    result = nightly(args.input, args.output, config_from_args(args), address=args.address, force=args.force,
                     progress=not args.no_progress, keep_cache=args.keep_cache)
    return report(result, "nightly")
