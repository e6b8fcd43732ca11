"""The ``evaluate`` pipeline: VPQ / PQ / STQ of a prediction set on Ray.

One Ray task per shard of videos (default: one video) runs
:func:`operators.metrics.video.evaluate_video`; its result is a few hundred sums. A tree
reduce adds the shards' sums into the dataset totals (only sums travel, never pixels);
the driver also keeps each video's sums for ``per_video.parquet``. A shard whose task dies
(its worker killed for memory, a crash) fails its videos, not the run: the totals are then
summed on the driver from the videos that finished. Local runs start an
in-process Ray (:mod:`cluster.connect`: loopback only); ``address`` joins a cluster (``"auto"`` or ``ray://…``).
"""
from __future__ import annotations

from typing import Sequence

from operators.errors import InputError
from operators.formats.vps_layout import read_ground_truth, read_predictions
from operators.metrics.report import EvaluationReport, build_report, write_report
from operators.metrics.video import (EvaluationSettings, VideoEvaluation, VideoInputs, annotation_spacing_warning,
                                     evaluate_videos, plan_videos)
from operators.metrics.totals import Totals
from operators.metrics.vpq import VpqStats

REDUCE_FANOUT = 16


def _remote_functions():
    import ray

    @ray.remote
    def evaluate_shard(videos, settings) -> list[VideoEvaluation]:
        return evaluate_videos(videos, settings)

    @ray.remote
    def shard_totals(results: list[VideoEvaluation]) -> Totals:
        return Totals.of(results)

    @ray.remote
    def merge_totals(*parts: Totals) -> Totals:
        return Totals.merge(parts)

    return evaluate_shard, shard_totals, merge_totals


def tree_reduce(refs: list, merge, fanout: int = REDUCE_FANOUT):
    """Reduce object refs to one with ``merge.remote(*group)`` in groups of ``fanout``: log
    depth, merges run as soon as their inputs exist."""
    while len(refs) > 1:
        refs = [merge.remote(*refs[i:i + fanout]) for i in range(0, len(refs), fanout)]
    return refs[0]


def evaluate(gt_json: str, gt_dir: str, pred_dir: str, out: str, *, address: str | None = None,
             allow_missing: bool = False, stride: int = 5, ks: Sequence[int] = (0, 5, 10, 15),
             gt_area: str = "summed", stq_ignore_label: int = 255, videos_per_task: int = 1,
             progress: bool = True) -> EvaluationReport:
    """Evaluate ``pred_dir`` (``pred.json`` + ``pan_pred/``) against a Cityscapes-VPS style
    GT and write the report under ``out``. Bad videos are listed in the report, not raised."""
    from cluster.connect import ray_session

    if videos_per_task < 1:
        raise InputError("--videos-per-task", f"videos per task must be at least 1, got {videos_per_task}")
    gt = read_ground_truth(gt_json, gt_dir)
    predictions = read_predictions(pred_dir)
    settings = EvaluationSettings(gt.categories, tuple(int(k) for k in ks), int(stride), allow_missing, gt_area,
                                  ignore_label=int(stq_ignore_label))
    plans = plan_videos(gt, predictions)
    shards = [plans[i:i + videos_per_task] for i in range(0, len(plans), videos_per_task)]

    with ray_session(address):  # a cluster's nodes run the installed tubeflow (see cluster/)
        videos, totals = run_shards(shards, settings, progress)
    report = build_report(settings, totals.vpq, totals.stq, videos)
    warning = annotation_spacing_warning(plans, settings.stride)
    report.warnings.extend([warning] if warning else [])
    write_report(out, report)
    return report


def run_shards(shards: list[list[VideoInputs]], settings: EvaluationSettings,
               progress: bool = False) -> tuple[list[VideoEvaluation], Totals]:
    """Evaluate the shards as Ray tasks: every video's result, and the dataset totals."""
    import ray
    from tqdm import tqdm

    evaluate_shard, shard_totals, merge_totals = _remote_functions()
    settings_ref = ray.put(settings)
    shard_of = {evaluate_shard.remote(shard, settings_ref): shard for shard in shards}
    pending = list(shard_of)
    totals_ref = tree_reduce([shard_totals.remote(ref) for ref in pending], merge_totals) if pending else None
    videos: list[VideoEvaluation] = []
    lost = False
    with tqdm(total=sum(map(len, shards)), unit="video", desc="evaluate", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the task died after its retries: its videos fail
                lost = True
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                results = [VideoEvaluation(v.video_id, len(v.frames), VpqStats(), None,
                                           f"video {v.video_id}: its evaluation task failed ({type(exc).__name__}"
                                           f"{': ' + reason if reason else ''})") for v in shard_of[done[0]]]
            for result in results:
                videos.append(result)
                bar.update(1)
                if result.error:
                    bar.write(f"failed: {result.error}")
    if totals_ref is None:
        return videos, Totals(VpqStats(), None)
    # the reduce over a lost shard fails too: the driver holds every other video's sums
    return videos, Totals.of(videos) if lost else ray.get(totals_ref)
