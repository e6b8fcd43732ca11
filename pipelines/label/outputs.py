"""Run-level outputs of a labelling run, rebuilt from the committed videos only:

* ``runs/<run_id>.json`` and ``run_manifest.json`` — config, config hash, model checksums,
  versions, per-video status and counts;
* ``failures.parquet`` — one row (video_id, stage, error) per video that failed in this run;
* ``pred.json`` — the submission layout's JSON over every committed video (with ``pan_pred/``);
* ``metrics/`` — the evaluation report (:mod:`operators.metrics.report`) summed over the
  committed videos' metric sums, exactly as ``tubeflow evaluate`` sums its per-video rows.

Every file is written atomically and after the per-video outputs it describes.
"""
from __future__ import annotations

import io
import itertools
import json
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from operators import fs
from operators.metrics.report import EvaluationReport, VideoLog, build_report, per_video_row, write_report
from operators.metrics.totals import Totals
from operators.metrics.video import EvaluationSettings
from pipelines.commit import CommitMarker, OutputLayout, committed_markers
from pipelines.label.finalize import VideoResult, annotations_rel, metrics_rel, read_video_metrics

FAILURE_SCHEMA = pa.schema([("video_id", pa.string()), ("stage", pa.string()), ("error", pa.string())])


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("tubeflow", "ray", "torch", "numpy", "pyarrow", "opencv-python-headless", "fsspec"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def failure_table(results: list[VideoResult]) -> pa.Table:
    return pa.Table.from_pylist([{"video_id": r.video_id, "stage": r.stage, "error": r.error}
                                 for r in results if r.status == "failed"], schema=FAILURE_SCHEMA)


def write_parquet(uri: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    fs.write_bytes(uri, buf.getvalue())


def write_run_manifest(layout: OutputLayout, run_id: str, document: dict, results: list[VideoResult]) -> dict:
    """Write the run manifest (and the failure rows) of one run; returns the manifest."""
    doc = dict(document)
    doc.update({"run_id": run_id, "versions": versions(),
                "videos": {r.video_id: asdict(r) for r in sorted(results, key=lambda r: r.video_id)},
                "totals": {status: sum(r.status == status for r in results) for status in ("ok", "skipped", "failed")}})
    failures = failure_table(results)
    write_parquet(layout.uri(f"runs/{run_id}.failures.parquet"), failures)
    write_parquet(layout.uri("failures.parquet"), failures)
    data = json.dumps(doc, indent=1, sort_keys=True, default=str).encode()
    fs.write_bytes(layout.uri(f"runs/{run_id}.json"), data)
    fs.write_bytes(layout.uri("run_manifest.json"), data)
    return doc


def _annotation_docs(layout: OutputLayout, markers: dict[str, CommitMarker]) -> Iterator[dict]:
    """The per-video annotation documents of the committed videos, in video order, read a
    bounded number at a time in parallel (:func:`operators.fs.map_io`)."""
    uris = (layout.uri(annotations_rel(video_id)) for video_id, marker in markers.items()
            if annotations_rel(video_id) in marker.files)
    for data in fs.map_io(fs.read_bytes, uris):
        yield json.loads(data)


def write_predictions_json(layout: OutputLayout, markers: dict[str, CommitMarker] | None = None) -> int:
    """``pred.json`` over every committed video (its PNGs are in ``pan_pred/``); returns the frame count.

    Beside the submission layout's ``annotations`` it lists the ``images`` (id, size, video_id,
    frame_index, timestamp_ns), which evaluators ignore and joins on time need.

    Written as a stream, one video's document at a time: the images go straight to the file, the
    annotations to a local spool appended after them, so 100,000 videos never sit in one list.
    The file appears complete or not at all (:func:`operators.fs.atomic_write`)."""
    markers = committed_markers(layout) if markers is None else markers
    with fs.atomic_write(layout.uri("pred.json")) as out, tempfile.TemporaryFile() as spool:
        out.write(b'{"images": [')
        images = annotations = 0
        for doc in _annotation_docs(layout, markers):
            for image in doc.get("images", []):
                out.write(b"," if images else b"")
                out.write(json.dumps(image).encode())
                images += 1
            for annotation in doc["annotations"]:
                spool.write(b"," if annotations else b"")
                spool.write(json.dumps(annotation).encode())
                annotations += 1
        out.write(b'], "annotations": [')
        spool.seek(0)
        shutil.copyfileobj(spool, out)
        out.write(b"]}")
    return annotations


@dataclass
class MetricsShard:
    """Consecutive committed videos whose metric sums one task adds up: ``(video_id, frames)``."""

    index: int
    root: str
    videos: list[tuple[str, int]]


def _read_metrics(root: str, settings: EvaluationSettings):
    """``(video_id, frames)`` → the committed video's :class:`VideoEvaluation` (its staged sums)."""
    layout = OutputLayout(root)
    return lambda video: read_video_metrics(layout.uri(metrics_rel(video[0])), video[0], video[1], settings)


def _shard_result(index: int, videos: list, settings: EvaluationSettings):
    """What :func:`pipelines.evaluate.evaluate_shard` returns for a shard it scored: the shard's
    totals and its videos' ``per_video.parquet`` rows."""
    from pipelines.evaluate import ShardResult

    return ShardResult(index, Totals.of(videos), [per_video_row(video, settings) for video in videos])


def sum_metrics_shard(shard: MetricsShard, settings: EvaluationSettings):
    """The unit of work of the aggregation on Ray (a task): the shard's videos' sums read in
    parallel and added up (:func:`_shard_result`)."""
    return _shard_result(shard.index, list(fs.map_io(_read_metrics(shard.root, settings), shard.videos)), settings)


def _shard_lost(shard: MetricsShard, settings: EvaluationSettings, exc: BaseException):
    """A summing task died after Ray's retries: ``metrics/`` is not written rather than written
    without those videos (the run fails, its videos stay committed; a rerun publishes)."""
    raise RuntimeError(f"summing the metrics of videos {shard.videos[0][0]} … {shard.videos[-1][0]} failed: "
                       f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc


def aggregate_metrics(layout: OutputLayout, settings: EvaluationSettings, video_ids: Iterable[str] | None = None,
                      markers: dict[str, CommitMarker] | None = None) -> EvaluationReport | None:
    """Sum the metric rows of the committed videos (all, or ``video_ids``) into ``metrics/``;
    ``markers``: the committed markers when the caller has just read them.

    As ``tubeflow evaluate`` sums: shards of :func:`pipelines.evaluate.shard_size` videos, as Ray
    tasks across the cluster when Ray runs in this process (:func:`sum_metrics_shard`; a run on
    Ray publishes inside its session), else here from one stream of parallel reads; the shards' totals are merged in shard order
    (:class:`pipelines.evaluate.TotalsSum`: the same floating-point sums whatever ran them, and
    the same as ``evaluate`` over the same videos), and each video's ``per_video.parquet`` row
    goes to a :class:`VideoLog` spill file: the driver holds O(1) per video, not every video's
    tables."""
    from cluster.connect import ray_running
    from pipelines.evaluate import TotalsSum, run_ray, shard_size

    markers = committed_markers(layout) if markers is None else markers
    wanted = None if video_ids is None else set(video_ids)
    scored = [(video_id, int(marker.counts.get("frames", 0))) for video_id, marker in markers.items()
              if (wanted is None or video_id in wanted) and f"{metrics_rel(video_id)}/vpq.parquet" in marker.files]
    if not scored:
        return None
    size = shard_size(len(scored))
    starts = range(0, len(scored), size)
    if ray_running():
        results = run_ray((MetricsShard(index, layout.root, scored[start:start + size])
                           for index, start in enumerate(starts)), settings, work=sum_metrics_shard, failed=_shard_lost)
    else:  # one stream of reads over every video (a bounded number in flight), cut into the same shards
        videos = fs.map_io(_read_metrics(layout.root, settings), scored)
        results = (_shard_result(index, list(itertools.islice(videos, size)), settings)
                   for index, _ in enumerate(starts))
    log, totals = VideoLog(settings.ks), TotalsSum()
    for result in results:
        for row in result.rows:
            log.add(row)
        totals.add(result)
    total = totals.result()
    report = build_report(settings, total.vpq, total.stq, log)
    write_report(layout.uri("metrics"), report)
    return report
