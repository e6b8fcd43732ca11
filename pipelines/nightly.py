"""Nightly reprocessing: label what is new or changed, then rebuild the run-level outputs
(``pred.json``, ``metrics/``) over every committed video of the output root.

The whole night — labelling and the rebuild — holds the output's lease (:mod:`pipelines.lease`),
and the rebuild reads fresh listings of the commit markers, so it covers exactly the videos
committed when it runs (on S3 too, where a cached listing once hid this night's videos)."""
from __future__ import annotations

from pipelines.label import LabelRun, label
from pipelines.label.config import LabelConfig
from pipelines.lease import Lease, new_run_id


def nightly(input_uri: str, output_uri: str, config: LabelConfig, *, address: str | None = None,
            force: bool = False, progress: bool = True, log=print, keep_cache: bool = False) -> LabelRun:
    """:func:`pipelines.label.label` (unchanged videos are skipped by their commit markers),
    then metrics and ``pred.json`` over the whole output, not only this night's corpus."""
    with Lease(output_uri, new_run_id(), command="tubeflow nightly") as lease:
        return _nightly_holding(input_uri, output_uri, config, lease, address=address, force=force,
                                progress=progress, log=log, keep_cache=keep_cache)


def _nightly_holding(input_uri: str, output_uri: str, config: LabelConfig, lease: Lease, *, address: str | None,
                     force: bool, progress: bool, log, keep_cache: bool) -> LabelRun:
    # publish_all: label's own publishing (one fresh read of the markers) covers the whole output
    run = label(input_uri, output_uri, config, address=address, force=force, progress=progress, log=log, lease=lease,
                keep_cache=keep_cache, publish_all=True)
    changed = sum(r.status != "skipped" for r in run.results)
    log(f"nightly: {changed} new or changed video(s) processed, {len(run.results) - changed} unchanged")
    return run
