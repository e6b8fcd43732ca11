"""Conversion between the Cityscapes-VPS layout and the segments table, both ways, one video
at a time (what ``tubeflow convert`` runs).

* GT JSON + PNG directory → table (plus the table's ``_categories.json``);
* ``pred.json`` + ``pan_pred/`` → table, the video identity of each prediction taken from
  the GT's ``images`` (``pred.json`` does not carry it);
* table → GT JSON + PNG directory, table → ``pred.json`` + ``pan_pred/``.

Pixels, segment ids, categories, ``iscrowd``, scores (as float32), image ids (as strings),
video ids and frame indices go through unchanged, so a metric computed on either layout is
the same (tests/test_convert.py). What the table does not hold: image file names (written
back as ``<image_id>.png``), JSON ``area``/``bbox`` fields that disagree with the pixels
(the table's are the mask's), and frames without any segment (a table row is a segment):
such a frame is refused with an error naming it rather than dropped.

Memory: one video at a time; the JSON side is streamed (:mod:`operators.formats.vps_stream`,
:class:`PredictionWriter`, a spill file for the GT's annotations).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterator, Mapping

from operators import fs
from operators.ids import image_key, png_name
from operators.errors import FormatMismatchError
from operators.formats import segments_table
from operators.formats.categories import Category
from operators.formats.panoptic import PanopticFrame, read_panoptic_png, write_panoptic_png
from operators.formats.vps_layout import PRED_PNG_DIR, PredictionWriter, VpsAnnotation, VpsImage
from operators.formats.vps_stream import VideoRecords, VideoSplit, parse_segments


@dataclass
class ConvertSummary:
    videos: int = 0
    frames: int = 0
    segments: int = 0


def _frame_rows(frame: PanopticFrame, image: VpsImage, where: str,
                categories: Mapping[int, Category]) -> list[segments_table.SegmentRow]:
    if not frame.segments:
        raise FormatMismatchError(where, "the frame has no segment: a segments table cannot hold an empty frame "
                                         "(a row is a segment)")
    return segments_table.frame_to_rows(frame, image.video_id, image.frame_index, str(image.id), categories)


def video_to_table(records: VideoRecords, side: str, png_dir: str, table: str,
                   categories: Mapping[int, Category]) -> tuple[int, int]:
    """Write one video's GT (``side="gt"``, PNGs in ``png_dir``) or predictions
    (``side="pred"``, PNGs in ``png_dir``/pan_pred) into ``table``; frames without an
    annotation on that side are left out. Returns (frames, segments) written."""
    rows = []
    frames = 0
    for f in records.frames:
        file_name, text = (f.gt_file, f.gt_segments_json) if side == "gt" else (f.pred_file, f.pred_segments_json)
        if file_name is None:
            continue
        uri = fs.join(png_dir, file_name)
        frame = PanopticFrame(read_panoptic_png(uri), parse_segments(text, f"{uri} segments_info"))
        rows.extend(_frame_rows(frame, f.image, uri, categories))
        frames += 1
    if rows:
        segments_table.write_segments_table(table, segments_table.rows_to_batch(rows))
    return frames, len(rows)


def vps_to_table(gt_json: str, gt_dir: str, table: str, pred_dir: str | None = None) -> ConvertSummary:
    """The GT (``pred_dir`` None) or the predictions in ``pred_dir`` → a segments table."""
    summary = ConvertSummary()
    with VideoSplit(gt_json, pred_dir) as split:
        side, png_dir = ("gt", gt_dir) if pred_dir is None else ("pred", fs.join(pred_dir, PRED_PNG_DIR))
        for records in split.videos():
            frames, segments = video_to_table(records, side, png_dir, table, split.categories)
            summary.videos += bool(frames)
            summary.frames += frames
            summary.segments += segments
        segments_table.write_table_categories(table, split.categories.values())
    return summary


def iter_table_videos(table: str) -> Iterator[tuple[str, list[segments_table.TableFrame]]]:
    """(video_id, its frames in frame order) for every video of the table, one at a time."""
    for video_id in segments_table.list_videos(table):
        frames = segments_table.video_frames(table, video_id)
        yield video_id, [frames[i] for i in sorted(frames)]


def table_to_gt(table: str, gt_json: str, gt_dir: str) -> ConvertSummary:
    """A segments table → GT JSON + PNG directory (``<image_id>_gtFine_panoptic.png``). The
    JSON is written last, from two spill files (images, annotations), never held whole."""
    summary = ConvertSummary()
    categories = segments_table.read_table_categories(table)
    with tempfile.TemporaryFile() as images, tempfile.TemporaryFile() as annotations:
        for video_id, frames in iter_table_videos(table):
            summary.videos += 1
            for item in frames:
                image = VpsImage(item.image_id, png_name(item.image_id), int(item.frame.ids.shape[1]),
                                 int(item.frame.ids.shape[0]), video_id, item.frame_index)
                name = f"{image_key(item.image_id)}_gtFine_panoptic.png"  # the one id rule: operators/ids.py
                write_panoptic_png(fs.join(gt_dir, name), item.frame.ids)
                separator = b",\n" if summary.frames else b""
                images.write(separator + json.dumps(image.to_json()).encode())
                annotations.write(separator + json.dumps(VpsAnnotation(image.id, name, item.frame.segments).to_json())
                                  .encode())
                summary.frames += 1
                summary.segments += len(item.frame.segments)
        with fs.atomic_write(gt_json) as out:
            for key, spill in (("images", images), ("annotations", annotations)):
                out.write(f'{"{" if key == "images" else ", "}"{key}": ['.encode())
                spill.seek(0)
                shutil.copyfileobj(spill, out)
                out.write(b"]")
            out.write(b', "categories": ' + json.dumps([c.to_json() for c in categories.values()]).encode() + b"}")
    return summary


def table_to_predictions(table: str, pred_dir: str) -> ConvertSummary:
    """A segments table → ``pred.json`` + ``pan_pred/<image_id>.png``."""
    summary = ConvertSummary()
    with PredictionWriter(pred_dir) as writer:
        for _, frames in iter_table_videos(table):
            summary.videos += 1
            for item in frames:
                writer.add(item.image_id, item.frame)
                summary.frames += 1
                summary.segments += len(item.frame.segments)
    return summary
