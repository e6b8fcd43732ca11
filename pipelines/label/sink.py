"""The sink of the labelling graph: the tracked frames of each associate row written to their
video's staging prefix (segments table part, PNGs, the frames' times; with GT, each annotated
frame's contingency table against it, :func:`score_frames`; with ``--overlay`` each frame's
overlay as a JPEG and with ``--review`` the thumbnail, :func:`render_frames`, from the frames'
pixels, which travel here with them), and one small summary row per video and batch for the
driver (:mod:`pipelines.label.passes`).

Writing a batch again (a retried task) writes the same files under the same names. Finalize
(:mod:`pipelines.label.finalize`) reads what the sink staged.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from operators import fs
from operators.formats import segments_table
from operators.formats.panoptic import PanopticFrame, write_panoptic_png
from operators.ids import png_name
from operators.video import split_stream_uri
from pipelines.commit import OutputLayout
from pipelines.label.columns import GtFrame, gt_of, segments_of, times_of
from pipelines.label.ground_truth import gt_frame_inputs, table_frames
from pipelines.label.stages import TIMED, batch_of, describe, rows_of, stage

FRAME_TIMES_DIR = "frame_times"  # staging only: finalize reads it and removes it before the commit
FRAME_TABLES_DIR = "frame_tables"  # staging only, like frame_times: the annotated frames' contingency tables
OVERLAY_FRAMES_DIR = "overlay_frames"  # staging only, like frame_times: the overlay's frames as JPEGs
FRAME_PART_DIRS = (FRAME_TIMES_DIR, FRAME_TABLES_DIR, OVERLAY_FRAMES_DIR)
"""The staging folders of small per-write Parquet parts named by their frames
(``part-<first>-<last>.parquet``, :func:`frame_part_span`); a retried write replaces its own file,
a resumed video loses the parts at and after its resume point (:func:`pipelines.label.faults.prepare_retry`)."""


def _write_frame_part(staging: str, folder: str, table, first: int, last: int, compression: str = "snappy") -> None:
    import pyarrow.parquet as pq

    with fs.atomic_write(fs.join(staging, folder, f"part-{first:08d}-{last:08d}.parquet")) as f:
        pq.write_table(table, f, compression=compression)


def frame_part_span(name: str) -> tuple[int, int] | None:
    """(first, last) frame of a part written by :func:`_write_frame_part` (None: not such a part)."""
    stem = name.rstrip("/").rsplit("/", 1)[-1]
    parts = stem.removesuffix(".parquet").split("-")
    if not stem.endswith(".parquet") or len(parts) != 3 or parts[0] != "part" or not all(p.isdigit() for p in parts[1:]):
        return None
    return int(parts[1]), int(parts[2])


def _iter_frame_parts(staging: str, folder: str) -> Iterator:
    """The Arrow tables of the parts in ``staging/folder``, in name (frame) order, one at a time."""
    import pyarrow.parquet as pq

    root = fs.join(staging, folder)
    filesystem, path = fs.filesystem(root)
    if not filesystem.exists(path):
        return
    for name in sorted(filesystem.find(path)):
        if name.endswith(".parquet") and "/." not in name[len(path):]:
            with filesystem.open(name, "rb") as f:
                yield pq.read_table(f)


def _read_frame_parts(staging: str, folder: str) -> list:
    """The Arrow tables of the parts in ``staging/folder``, in name (frame) order."""
    return list(_iter_frame_parts(staging, folder))


def write_frame_times(staging: str, times: list[tuple[int, int | None]], size: tuple[int, int]) -> None:
    """One small Parquet file of (frame_index, timestamp_ns, height, width) per sink write, named by
    its frames (a retried write replaces its own file): finalize takes the frames' times and the
    video's size from it, so it never opens the video (not even one without any segment)."""
    import pyarrow as pa

    table = pa.table({"frame_index": pa.array([i for i, _ in times], pa.int32()),
                      "timestamp_ns": pa.array([t for _, t in times], pa.int64()),
                      "height": pa.array([size[0]] * len(times), pa.int32()),
                      "width": pa.array([size[1]] * len(times), pa.int32())})
    _write_frame_part(staging, FRAME_TIMES_DIR, table, min(i for i, _ in times), max(i for i, _ in times))


def read_frame_times(staging: str) -> tuple[dict[int, int | None], tuple[int, int] | None]:
    """frame_index → timestamp_ns of every staged frame, and the frames' (height, width) (empty
    and None when nothing was staged)."""
    out, size = {}, None
    for table in _read_frame_parts(staging, FRAME_TIMES_DIR):
        out.update(zip(table["frame_index"].to_pylist(), table["timestamp_ns"].to_pylist()))
        if size is None and table.num_rows:
            size = (int(table["height"][0].as_py()), int(table["width"][0].as_py()))
    return out, size


def score_frames(video_id: str, frames: list[tuple[int, PanopticFrame, GtFrame]], settings) -> list:
    """Each annotated frame's contingency table against its GT (read here: the PNG its record
    names, or the frame's masks in the GT table, one read of the video's partition), by
    :func:`operators.metrics.video.frame_inputs_table`, the function ``tubeflow evaluate`` scores
    a frame with. ``frames``: (frame index, predicted frame, GT record).
    Returns (frame index, :class:`FrameTable` or None, error): a frame whose GT is bad gets
    its error (``video … frame …: …``), which fails the video when finalize scores it."""
    from operators.errors import TubeflowError
    from operators.metrics.video import frame_inputs_table

    try:
        pixels, unreadable = table_frames(video_id, [gt for *_, gt in frames]), None
    except TubeflowError as exc:  # the table's partition: every table frame of the write fails with it
        pixels, unreadable = {}, exc
    out = []
    for index, prediction, gt in frames:
        where = f"video {video_id} frame {index}"
        try:
            if gt.table and unreadable is not None:
                raise unreadable
            inputs = gt_frame_inputs(gt, prediction, f"prediction of {where}", pixels)
            table, _ = frame_inputs_table(inputs, settings, where)
            out.append((index, table, ""))
        except TubeflowError as exc:
            out.append((index, None, str(exc) if str(exc).startswith(where) else f"{where}: {exc}"))
    return out


def write_frame_tables(staging: str, scored: list, first: int, last: int) -> None:
    """The annotated frames' tables of one sink write (frames ``first``..``last``) as one Parquet
    part: the rows of :func:`operators.metrics.contingency.frame_tables_to_arrow` plus ``error``
    (a frame whose GT is bad: an error and no table)."""
    import pyarrow as pa

    from operators.metrics.contingency import SegmentTable, FrameTable, frame_tables_to_arrow

    none = np.zeros(0, np.int64)
    empty = SegmentTable(none, none, none, none, none)
    tables = [t if t is not None else FrameTable(i, empty, empty, none, none, none) for i, t, _ in scored]
    table = frame_tables_to_arrow(tables).append_column("error", pa.array([e for _, _, e in scored], pa.string()))
    _write_frame_part(staging, FRAME_TABLES_DIR, table, first, last)


def read_frame_tables(staging: str) -> dict[int, tuple]:
    """frame_index → (:class:`FrameTable` or None, error) of every staged annotated frame."""
    from operators.metrics.contingency import frame_tables_from_arrow

    out = {}
    for table in _read_frame_parts(staging, FRAME_TABLES_DIR):
        for frame, error in zip(frame_tables_from_arrow(table), table["error"].to_pylist()):
            out[frame.frame_index] = (None if error else frame, error)
    return out


def write_overlay_frames(staging: str, frames: list[tuple[int, bytes]]) -> None:
    """The rendered overlay frames of one sink write, ``(frame index, JPEG)`` each, as Parquet parts
    of ``frame_index, jpeg`` named by their frames, one per run of consecutive frames: the parts'
    name order is then frame order (a write can hold frames of chunks that are not neighbours),
    and finalize streams them into the video part after part (:func:`iter_overlay_frames`)."""
    import pyarrow as pa

    frames = sorted(frames)
    runs: list[list[tuple[int, bytes]]] = []
    for index, jpeg in frames:
        if runs and runs[-1][-1][0] == index - 1:
            runs[-1].append((index, jpeg))
        else:
            runs.append([(index, jpeg)])
    for run in runs:
        table = pa.table({"frame_index": pa.array([i for i, _ in run], pa.int32()),
                          "jpeg": pa.array([j for _, j in run], pa.binary())})
        _write_frame_part(staging, OVERLAY_FRAMES_DIR, table, run[0][0], run[-1][0], compression="none")  # JPEG


def iter_overlay_frames(staging: str) -> Iterator[tuple[int, bytes]]:
    """``(frame index, JPEG)`` of every staged overlay frame, in frame order (one part in memory)."""
    for table in _iter_frame_parts(staging, OVERLAY_FRAMES_DIR):
        yield from zip(table["frame_index"].to_pylist(), table["jpeg"].to_pylist())


def segment_labels(batch) -> list:
    """What the overlay writes beside each segment of a frame's segments-table batch (the table's
    own track id, class, bbox of the mask, thing or not, crowd or not)."""
    from operators.review.overlay import LabelledSegment

    columns = [batch.column(name).to_pylist() for name in ("track_id", "category_id", "bbox", "isthing", "iscrowd")]
    return [LabelledSegment(t, c, tuple(b), th, cr) for t, c, b, th, cr in zip(*columns)]


def render_frames(staging: str, video_id: str, frame_count: int, rendered: list, categories, render: str) -> None:
    """Render the frames of a write that the run renders (``rendered``: frame index, ``(H, W, 3)
    uint8`` pixels, ``(H, W) int32`` track ids, :func:`segment_labels`, time) where their pixels already
    are, instead of decoding the video again in finalize: with ``render`` ``"overlay"`` each as a
    JPEG overlay frame (:func:`write_overlay_frames`); the middle frame also as the video's
    thumbnail (:func:`pipelines.review.write_thumbnail`, written to its place in the staging)."""
    from operators.formats.categories import CITYSCAPES_CATEGORIES
    from operators.review.overlay import encode_jpeg, render_frame_overlay
    from pipelines.label.stages import thumbnail_frame
    from pipelines.review import thumbnail_rel, write_thumbnail

    categories = tuple(categories or CITYSCAPES_CATEGORIES)
    jpegs = []
    for index, rgb, ids, labelled, timestamp in rendered:
        image = render_frame_overlay(rgb, ids, labelled, timestamp_ns=timestamp, categories=categories)
        if render == "overlay":
            jpegs.append((index, encode_jpeg(image)))
        if index == thumbnail_frame(frame_count):
            write_thumbnail(fs.join(staging, thumbnail_rel(video_id)), image)
    if jpegs:
        write_overlay_frames(staging, jpegs)


def _sink_failed(summary: dict, exc: BaseException) -> dict:
    """Writing the video's frames failed: none of them counts as done."""
    summary.update(error=describe(exc), stage="sink", frames_failed=summary["frames_failed"] + summary["frames_done"],
                   frames_done=0, frames=np.zeros(0, np.int64))
    return summary


@stage("sink", skip_failed=False, failed=_sink_failed)
def _stage_video(summary: dict, *, layout: OutputLayout, run_id: str, good: list, uri: str, write_png: bool,
                 categories, settings, render: str = "") -> dict:
    """Write one video's good frames of a batch to its staging prefix; ``summary`` says what was written."""
    video_id = summary["video_id"]
    staging = layout.staging(run_id, video_id)
    source_uri, topic = split_stream_uri(uri)
    tables, annotated, rendered = [], [], []
    for index, image_id, timestamp, ids, segments, gt, rgb in good:
        frame = PanopticFrame(ids, segments)
        tables.append(segments_table.frame_to_batch(frame, video_id, index, image_id,
                                                    *([categories] if categories else []),
                                                    timestamp_ns=timestamp, source_uri=source_uri, topic=topic))
        if rgb is not None:
            rendered.append((index, rgb, ids, segment_labels(tables[-1]), timestamp))
        if write_png:
            write_panoptic_png(fs.join(staging, "pan_pred", png_name(image_id)), frame.ids)
        if gt is not None and settings is not None:
            annotated.append((index, frame, gt))
    nonempty = [t for t in tables if t.num_rows]
    if nonempty:
        (part,) = segments_table.write_segments_table(fs.join(staging, "segments"), nonempty)
        summary["part"] = part.rsplit("/", 1)[-1]
    if good:  # every frame's time, also of frames without segments (finalize reads it)
        first, last = min(g[0] for g in good), max(g[0] for g in good)
        write_frame_times(staging, [(index, timestamp) for index, _, timestamp, *_ in good], good[0][3].shape[:2])
        if annotated:  # what evaluation needs of these frames: no PNG written or read for it
            write_frame_tables(staging, score_frames(video_id, annotated, settings), first, last)
    if rendered:
        render_frames(staging, video_id, int(summary["frame_count"]), rendered, categories, render)
    summary["segments"] = sum(t.num_rows for t in tables)
    return summary


def tracked_frames(row: dict) -> list[tuple]:
    """The frames of an associate row: (frame index, image id, time, error, ``(H, W) int32``
    track ids, segment records, GT record or None, ``(H, W, 3) uint8`` pixels or None: the
    frame is not rendered) each."""
    gt, indices = gt_of(row), row["frame_indices"].tolist()
    pixels = dict(zip(row["rgb_frames"].tolist(), row["rgb"])) if "rgb_frames" in row else {}
    return [(index, image_id, timestamp, error, ids, segments, gt.get(index), pixels.get(index))
            for index, image_id, timestamp, error, ids, segments in zip(
                indices, row["image_ids"].tolist(), times_of(row), row["frame_errors"].tolist(), row["panoptic"],
                segments_of(row, len(indices)))]


def write_frames(batch: dict, root: str, run_id: str, write_png: bool, categories=None, settings=None,
                 render: str = "") -> dict:
    """Write the tracked frames of a batch of associate rows to their video's staging prefix
    (segments table part, frame times, PNGs; with ``settings``, the evaluation's
    :class:`~operators.metrics.video.EvaluationSettings`, the contingency tables of the frames
    that carry a GT record) and return one summary row per video of the batch: counts, the
    frames written (``frames``, ``(m,) int64``) and the segments part's file name (``part``).

    Writing a batch again (a retried task) writes the same files under the same names.
    ``categories``: the model's classes (default Cityscapes'), which say what is a thing;
    ``render``: what it renders from the frames' pixels (:func:`render_frames`)."""
    layout = OutputLayout(root)
    by_video: dict[str, list[dict]] = {}
    for row in rows_of(batch):
        by_video.setdefault(str(row["video_id"]), []).append(row)
    summaries = []
    for video_id, rows in by_video.items():
        # (frame index, image id, time, ids, segments, GT record or None, pixels or None) of the
        # frames to write; errors
        good, frame_errors = [], []
        for r in rows:
            for index, image_id, timestamp, error, ids, segments, gt, rgb in tracked_frames(r):
                if error:
                    frame_errors.append(error)
                else:
                    good.append((index, image_id, timestamp, ids, segments, gt, rgb))
        errors = [r["error"] for r in rows if r["error"]] + frame_errors
        stage_name = next((r["stage"] for r in rows if r["error"]), "associate" if frame_errors else "")
        summary = {"video_id": video_id, "frame_count": int(rows[0]["frame_count"]), "frames_done": len(good),
                   "frames_failed": sum(int(r["failed_frames"]) for r in rows) + len(frame_errors), "segments": 0,
                   "error": errors[0] if errors else "", "stage": stage_name,
                   "lost": any(bool(r["lost"]) for r in rows),
                   "frames": np.array([index for index, *_ in good], np.int64), "part": "",
                   **{f"t_{s}": float(sum(r[f"t_{s}"] for r in rows)) for s in TIMED if s != "sink"}}
        summaries.append(_stage_video(summary, layout=layout, run_id=run_id, good=good, uri=str(rows[0]["uri"]),
                                      write_png=write_png, categories=categories, settings=settings,
                                      render=render))
    return batch_of(summaries)
