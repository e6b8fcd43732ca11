"""The sink of the labelling graph: the tracked frames of each associate row written to their
video's staging prefix (segments table part, PNGs, the frames' times), and one small summary row
per video and batch for the driver (:mod:`pipelines.label.passes`).

Writing a batch again (a retried task) writes the same files under the same names. Finalize
(:mod:`pipelines.label.finalize`) reads what the sink staged.
"""
from __future__ import annotations

import json

from operators import fs
from operators.formats import segments_table
from operators.formats.panoptic import PanopticFrame, SegmentInfo, write_panoptic_png
from operators.ids import png_name
from operators.video import split_stream_uri
from pipelines.commit import OutputLayout
from pipelines.label.stages import TIMED, batch_of, describe, rows_of, stage

FRAME_TIMES_DIR = "frame_times"  # staging only: finalize reads it and removes it before the commit


def write_frame_times(staging: str, times: list[tuple[int, int | None]]) -> None:
    """One small Parquet file of (frame_index, timestamp_ns) per sink write, named by its frames
    (a retried write replaces its own file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"frame_index": pa.array([i for i, _ in times], pa.int32()),
                      "timestamp_ns": pa.array([t for _, t in times], pa.int64())})
    first, last = min(i for i, _ in times), max(i for i, _ in times)
    with fs.atomic_write(fs.join(staging, FRAME_TIMES_DIR, f"part-{first:08d}-{last:08d}.parquet")) as f:
        pq.write_table(table, f)


def read_frame_times(staging: str) -> dict[int, int | None]:
    """frame_index → timestamp_ns of every staged frame (empty when nothing was staged)."""
    import pyarrow.parquet as pq

    root = fs.join(staging, FRAME_TIMES_DIR)
    filesystem, path = fs.filesystem(root)
    if not filesystem.exists(path):
        return {}
    out = {}
    for name in sorted(filesystem.find(path)):
        if name.endswith(".parquet") and "/." not in name[len(path):]:
            with filesystem.open(name, "rb") as f:
                table = pq.read_table(f)
            out.update(zip(table["frame_index"].to_pylist(), table["timestamp_ns"].to_pylist()))
    return out


def _sink_failed(summary: dict, exc: BaseException) -> dict:
    """Writing the video's frames failed: none of them counts as done."""
    summary.update(error=describe(exc), stage="sink", frames_failed=summary["frames_failed"] + summary["frames_done"],
                   frames_done=0, frames="[]")
    return summary


@stage("sink", skip_failed=False, failed=_sink_failed)
def _stage_video(summary: dict, *, layout: OutputLayout, run_id: str, good: list, uri: str, write_png: bool,
                 categories) -> dict:
    """Write one video's good frames of a batch to its staging prefix; ``summary`` says what was written."""
    video_id = summary["video_id"]
    staging = layout.staging(run_id, video_id)
    source_uri, topic = split_stream_uri(uri)
    tables = []
    for index, image_id, timestamp, ids, segments in good:
        frame = PanopticFrame(ids, [SegmentInfo.from_json(s) for s in segments])
        tables.append(segments_table.frame_to_batch(frame, video_id, index, image_id,
                                                    *([categories] if categories else []),
                                                    timestamp_ns=timestamp, source_uri=source_uri, topic=topic))
        if write_png:
            write_panoptic_png(fs.join(staging, "pan_pred", png_name(image_id)), frame.ids)
    nonempty = [t for t in tables if t.num_rows]
    if nonempty:
        (part,) = segments_table.write_segments_table(fs.join(staging, "segments"), nonempty)
        summary["part"] = part.rsplit("/", 1)[-1]
    if good:  # every frame's time, also of frames without segments (finalize reads it)
        write_frame_times(staging, [(index, timestamp) for index, _, timestamp, _, _ in good])
    summary["segments"] = sum(t.num_rows for t in tables)
    return summary


def write_frames(batch: dict, root: str, run_id: str, write_png: bool, categories=None) -> dict:
    """Write the tracked frames of a batch of associate rows to their video's staging prefix
    (segments table part, PNGs) and return one summary row per video of the batch: counts, the
    frames written (``frames``, JSON list) and the segments part's file name (``part``).

    Writing a batch again (a retried task) writes the same files under the same names.
    ``categories``: the model's classes (default Cityscapes'), which say what is a thing."""
    layout = OutputLayout(root)
    by_video: dict[str, list[dict]] = {}
    for row in rows_of(batch):
        by_video.setdefault(str(row["video_id"]), []).append(row)
    summaries = []
    for video_id, rows in by_video.items():
        good, frame_errors = [], []  # (frame index, image id, time, ids, segments) of the frames to write; errors
        for r in rows:
            frames = zip(r["frame_indices"], json.loads(r["image_ids"]), json.loads(r["timestamps"]),
                         json.loads(r["frame_errors"]), r["panoptic"], json.loads(r["segments"]))
            for index, image_id, timestamp, error, ids, segments in frames:
                if error:
                    frame_errors.append(error)
                else:
                    good.append((int(index), image_id, timestamp, ids, segments))
        errors = [r["error"] for r in rows if r["error"]] + frame_errors
        stage_name = next((r["stage"] for r in rows if r["error"]), "associate" if frame_errors else "")
        summary = {"video_id": video_id, "frame_count": int(rows[0]["frame_count"]), "frames_done": len(good),
                   "frames_failed": sum(int(r["failed_frames"]) for r in rows) + len(frame_errors), "segments": 0,
                   "error": errors[0] if errors else "", "stage": stage_name,
                   "lost": any(bool(r["lost"]) for r in rows), "frames": json.dumps([index for index, *_ in good]),
                   "part": "", **{f"t_{s}": float(sum(r[f"t_{s}"] for r in rows)) for s in TIMED if s != "sink"}}
        summaries.append(_stage_video(summary, layout=layout, run_id=run_id, good=good, uri=str(rows[0]["uri"]),
                                      write_png=write_png, categories=categories))
    return batch_of(summaries)
