"""Finishing one video once all its frames are staged: per-video annotations (with each
frame's ``timestamp_ns``), metric sums against the GT, the overlay video (assembled from the
JPEG frames the sink rendered), the review outputs (:mod:`pipelines.review`), then the commit
(:mod:`pipelines.commit`).

This runs as one Ray task per video (launched by the driver when the sink has reported
every frame of the video); everything it reads is in the video's staging prefix, so it needs
no pixels from the pipeline and opens no video (the frames' size is staged with their times).
Bad input (missing GT, a GT PNG that does not decode) makes the
video fail with a row naming the file; nothing of it is committed.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from operators import fs
from operators.errors import InputError
from operators.formats import segments_table
from operators.formats.categories import CITYSCAPES_CATEGORIES, Category
from operators.formats.panoptic import PanopticFrame, SegmentInfo
from operators.metrics.stq import StqStats
from operators.metrics.video import EvaluationSettings, VideoEvaluation, frame_gaps, frame_inputs_table, score_tables
from operators.metrics.vpq import VpqStats
from operators.video import open_video
from operators.video.mjpeg_avi import MjpegAviWriter
from operators.ids import png_name, video_key
from pipelines.lease import check_holder
from pipelines.commit import CommitMarker, OutputLayout, commit_video, remove_tree
from pipelines.label.sink import (FRAME_TABLES_DIR, FRAME_TIMES_DIR, OVERLAY_FRAMES_DIR, iter_overlay_frames,
                                  read_frame_tables, read_frame_times)
from pipelines.label.ground_truth import GtRef, VideoGt, frame_image_id, gt_frame_inputs, read_video_gt, table_frames
from pipelines.review import review_part_rel, thumbnail_rel, write_review_part


@dataclass
class VideoTask:
    """Everything :func:`finalize_video` needs, small and picklable."""

    video_id: str
    uri: str
    fingerprint: str
    frame_count: int
    image_id_format: str  # image ids of the frames the GT does not name
    gt: GtRef | None = None  # where the video's GT is (read here: its image ids, its annotated frames)
    categories: tuple[Category, ...] = CITYSCAPES_CATEGORIES  # the model's classes (overlay colours)


@dataclass
class VideoResult:
    """The outcome of one video, for the run manifest and the summary table."""

    video_id: str
    status: str  # "ok", "skipped", "failed"
    frames: int = 0
    segments: int = 0
    tracks: int = 0
    stage: str = ""
    error: str = ""
    metrics: dict = field(default_factory=dict)


def annotations_rel(video_id: str) -> str:
    return f"annotations/{video_key(video_id)}.json"


def metrics_rel(video_id: str) -> str:
    return f"video_metrics/{video_key(video_id)}"


def overlay_rel(video_id: str) -> str:
    return f"overlays/{video_key(video_id)}.avi"


def _staged_frames(staging: str) -> dict[int, list]:
    """frame_index → rows of the staged segments table (frames without segments are absent)."""
    root = fs.join(staging, "segments")
    if not fs.exists(root):
        return {}
    by_frame: dict[int, list] = {}
    for row in segments_table.table_to_rows(segments_table.read_segments_table(root)):
        by_frame.setdefault(row.frame_index, []).append(row)
    return by_frame


def write_video_metrics(uri: str, evaluation: VideoEvaluation) -> None:
    """A video's VPQ and STQ sums as two Parquet files (what the aggregation adds up)."""
    for name, table in (("vpq.parquet", evaluation.vpq.table), ("stq.parquet", evaluation.stq.table)):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        fs.write_bytes(fs.join(uri, name), buf.getvalue())


def read_video_metrics(uri: str, video_id: str, frames: int, settings: EvaluationSettings) -> VideoEvaluation:
    """The :class:`VideoEvaluation` written by :func:`write_video_metrics`."""
    vpq = pq.read_table(io.BytesIO(fs.read_bytes(fs.join(uri, "vpq.parquet"))))
    stq_table = pq.read_table(io.BytesIO(fs.read_bytes(fs.join(uri, "stq.parquet"))))
    empty = settings.new_stq().stats()  # the confusion size and ignore mask of these settings
    return VideoEvaluation(video_id, frames, VpqStats(vpq), StqStats(empty.size, empty.include, stq_table))


def _evaluate(task: VideoTask, gt: VideoGt, staging: str, size, settings: EvaluationSettings) -> VideoEvaluation:
    """The video's VPQ and STQ sums from the contingency tables the sink staged (no PNG is
    written or read here); an annotated frame the sink never saw (the GT names a frame past the
    video's end) is scored here against an empty prediction."""
    if not gt.frames:
        raise InputError(f"video {task.video_id}", "the GT has no annotated frame of this video")
    staged = read_frame_tables(staging)
    pixels = table_frames(task.video_id, [f for f in gt.frames if f.image.frame_index not in staged])

    def tables():
        for frame in gt.frames:
            index = frame.image.frame_index
            where = f"video {task.video_id} frame {index}"
            table, error = staged.get(index, (None, ""))
            if error:  # the sink's message: "video … frame …: problem"
                raise InputError(where, error.removeprefix(f"{where}: "))
            if table is None:
                empty = PanopticFrame(np.zeros(size, np.int32))
                table, _ = frame_inputs_table(gt_frame_inputs(frame, empty, f"prediction of {where}", pixels),
                                              settings, where)
            yield table

    vpq, stq = score_tables(task.video_id, tables(), settings)
    indices = [frame.image.frame_index for frame in gt.frames]
    return VideoEvaluation(task.video_id, len(indices), vpq, stq, None, 0, frame_gaps(indices))


DEFAULT_FPS = 10.0
"""The overlay's frame rate when the frames have no times (an image directory) to measure it from."""


def frame_rate(times: dict[int, int | None], frame_count: int) -> float:
    """Frames per second from the frames' times (the first to the last), as the source's own
    metadata would say it (a log's rate is measured the same way); :data:`DEFAULT_FPS` without times."""
    first, last = times.get(0), times.get(frame_count - 1)
    if frame_count > 1 and first is not None and last is not None and last > first:
        return (frame_count - 1) * 1e9 / (last - first)
    return DEFAULT_FPS


def _write_overlay(task: VideoTask, staging: str, times: dict) -> None:
    """``overlays/<video>.avi`` (Motion-JPEG) from the overlay frames the sink rendered and
    staged as JPEGs (:func:`pipelines.label.sink.render_frames`): their bytes one after another,
    in frame order, without decoding the video or re-encoding a frame."""
    with MjpegAviWriter(fs.join(staging, overlay_rel(task.video_id)), frame_rate(times, task.frame_count)) as writer:
        for index, jpeg in iter_overlay_frames(staging):
            if index != writer.frames_written:
                raise RuntimeError(f"video {task.video_id}: overlay frame {writer.frames_written} was not staged "
                                   f"(the next staged one is {index})")
            writer.write(jpeg)
        if writer.frames_written != task.frame_count:
            raise RuntimeError(f"video {task.video_id}: {writer.frames_written} of {task.frame_count} overlay "
                               "frames were staged")


def finalize_video(root: str, run_id: str, task: VideoTask, config_hash: str, model_checksums: dict,
                   settings: EvaluationSettings | None, write_overlay: bool,
                   review: str | None = None) -> VideoResult:
    """Annotations, metrics, overlay and review outputs of one fully staged video, then its commit."""
    layout = OutputLayout(root)
    staging = layout.staging(run_id, task.video_id)
    stage = "gt"
    try:
        gt = read_video_gt(task.gt) if task.gt is not None else VideoGt()
        stage = "finalize"
        times, size = read_frame_times(staging)
        by_frame = _staged_frames(staging)
        remove_tree(fs.join(staging, FRAME_TIMES_DIR))  # read once here, not an output
        if size is None:  # no frame staged at all (a video the driver never sends here): ask the video
            with open_video(task.uri) as source:
                size = source.meta.size
        images, annotations = [], []
        for index in range(task.frame_count):
            image_id, rows = frame_image_id(gt.names, task.image_id_format, task.video_id, index), by_frame.get(index, [])
            images.append({"id": image_id, "file_name": png_name(image_id), "width": size[1], "height": size[0],
                           "video_id": task.video_id, "frame_index": index, "timestamp_ns": times.get(index)})
            annotations.append({"image_id": image_id, "file_name": png_name(image_id), "segments_info": [
                SegmentInfo(r.track_id, r.category_id, r.area, tuple(r.bbox), int(r.iscrowd), r.score).to_json()
                for r in rows]})
        fs.write_bytes(fs.join(staging, annotations_rel(task.video_id)),
                       json.dumps({"images": images, "annotations": annotations}).encode())
        metrics = {}
        if settings is not None:
            stage = "evaluate"
            evaluation = _evaluate(task, gt, staging, size, settings)
            write_video_metrics(fs.join(staging, metrics_rel(task.video_id)), evaluation)
            stq = evaluation.stq.result()
            metrics = {"stq": float(stq["STQ"]), "aq": float(stq["AQ"]),
                       "vpq": float(evaluation.vpq.result(settings.categories, settings.ks).vpq)}
        remove_tree(fs.join(staging, FRAME_TABLES_DIR))  # scored: not an output
        if write_overlay:
            stage = "overlay"
            _write_overlay(task, staging, times)
        remove_tree(fs.join(staging, OVERLAY_FRAMES_DIR))  # in the video now: not an output
        if review:
            stage = "review"
            write_review_part(fs.join(staging, review_part_rel(task.video_id)), task.uri, task.frame_count, by_frame,
                              size, times, task.categories)
        if (review or write_overlay) and not fs.exists(fs.join(staging, thumbnail_rel(task.video_id))):
            raise RuntimeError(f"video {task.video_id}: the sink staged no thumbnail")  # it renders the middle frame
        stage = "commit"
        rows = [r for frame_rows in by_frame.values() for r in frame_rows]
        counts = {"frames": task.frame_count, "segments": len(rows),
                  "tracks": len({r.track_id for r in rows if r.isthing and not r.iscrowd})}
        commit_video(layout, task.video_id, staging, CommitMarker(task.video_id, task.fingerprint, config_hash,
                                                                  model_checksums, counts, [], run_id),
                     guard=lambda: check_holder(root, run_id))  # fencing: never commit for a lost lease
        return VideoResult(task.video_id, "ok", counts["frames"], counts["segments"], counts["tracks"],
                           metrics=metrics)
    except Exception as exc:
        from pipelines.label.stages import describe

        remove_tree(staging)
        return VideoResult(task.video_id, "failed", stage=stage, error=describe(exc))
