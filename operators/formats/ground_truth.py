"""The ground truth of one video, from either layout, read by the task that needs it.

A GT comes as the Cityscapes-VPS layout (one JSON + a PNG directory) or as a segments table
(Parquet, hive-partitioned by video). Neither is ever parsed whole in one process:

* the JSON is split per video by :class:`operators.formats.vps_stream.VideoSplit` (a
  stream), and each video's records travel to its task as a :class:`VideoGroundTruth`
  holding PNG URIs and ``segments_info`` as JSON text (a few hundred bytes per frame);
* a table video is just (root, video id): the task reads its partition.

:func:`read_video_ground_truth` turns either into the video's annotated frames; it is what a
pipeline (evaluation, the label pipeline's ``--gt``) calls inside the task.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError, InputError
from operators.formats import segments_table
from operators.formats.categories import Category
from operators.formats.panoptic import PanopticFrame, SegmentInfo, read_panoptic_png, validate_frame
from operators.formats.vps_layout import VpsImage
from operators.formats.vps_stream import VideoRecords, VideoSplit, parse_segments


def gt_layout(uri: str) -> str:
    """How a GT is given: ``"table"`` for a segments table (a directory, or an object-store
    prefix, of video partitions), ``"json"`` for a GT JSON file (the Cityscapes-VPS layout).
    The one check of every command that takes a GT (``label --gt``, ``evaluate``). Raises
    :class:`CorruptFileError` naming ``uri`` when there is nothing there."""
    filesystem, path = fs.fresh(uri)
    path = path.rstrip("/")
    try:
        if filesystem.isdir(path):
            return "table"
        if filesystem.isfile(path):
            return "json"
    except OSError as exc:
        raise CorruptFileError(uri, f"cannot read it: {exc}") from None
    raise CorruptFileError(uri, "not found (a GT JSON file or a segments table directory)")


@dataclass
class GtFrameRef:
    """Where one annotated frame's GT is: its PNG and ``segments_info`` (a list, or JSON
    text checked when read). ``png_uri`` "": the image has no annotation in the GT."""

    image: VpsImage
    png_uri: str
    segments: list[SegmentInfo] | str = field(default_factory=list)

    def segment_list(self) -> list[SegmentInfo]:
        if isinstance(self.segments, str):
            return parse_segments(self.segments, f"video {self.image.video_id} frame {self.image.frame_index} "
                                                  f"(image {self.image.id!r}) segments_info")
        return self.segments


@dataclass
class VideoGroundTruth:
    """One video's GT, small and picklable: ``frames`` (JSON layout) or ``table`` (the root
    of a segments table whose partition of ``video_id`` holds it)."""

    video_id: str
    frames: list[GtFrameRef] = field(default_factory=list)
    table: str = ""


def from_records(records: VideoRecords, png_dir: str) -> VideoGroundTruth:
    """The GT side of a video split from a GT JSON (:class:`VideoSplit`)."""
    return VideoGroundTruth(records.video_id, [
        GtFrameRef(f.image, fs.join(png_dir, f.gt_file) if f.gt_file is not None else "", f.gt_segments_json)
        for f in records.frames])


def table_image(frame: segments_table.TableFrame) -> VpsImage:
    """The image of a table frame: the table keeps its id, video, frame index and size."""
    height, width = frame.frame.ids.shape
    return VpsImage(frame.image_id, "", int(width), int(height), frame.video_id, frame.frame_index)


def read_video_ground_truth(video: VideoGroundTruth,
                            categories: Mapping[int, Category] | Iterable[int] | None = None
                            ) -> list[tuple[VpsImage, PanopticFrame]]:
    """The annotated frames of one video in frame order, from either layout, each checked
    (PNG ids and segments_info agree, the size is the image's, categories are known).

    Raises :class:`InputError` naming the video, frame and file for bad input (an image
    without annotation, a PNG that does not decode, a malformed record, an empty table
    partition).
    """
    known = None if categories is None else set(categories.keys() if isinstance(categories, Mapping) else categories)
    if video.table:
        frames = segments_table.video_frames(video.table, video.video_id)
        if not frames:
            raise InputError(segments_table.partition_dir(video.table, video.video_id),
                             f"no GT rows for video {video.video_id}")
        out = []
        for index in sorted(frames):
            image = table_image(frames[index])
            validate_frame(frames[index].frame, f"video {video.video_id} frame {index} ({video.table})", known)
            out.append((image, frames[index].frame))
        return out
    out = []
    for ref in video.frames:
        if not ref.png_uri:
            raise FormatMismatchError(f"video {video.video_id} frame {ref.image.frame_index}",
                                      f"image {ref.image.id!r} has no GT annotation")
        frame = PanopticFrame(read_panoptic_png(ref.png_uri), ref.segment_list())
        size = (ref.image.height, ref.image.width) if ref.image.height and ref.image.width else None
        validate_frame(frame, ref.png_uri, known, size)
        out.append((ref.image, frame))
    return out


def iter_ground_truth(gt_json: str = "", gt_dir: str = "", table: str = "",
                      split: VideoSplit | None = None) -> Iterator[VideoGroundTruth]:
    """Every video of a GT, one at a time: from a :class:`VideoSplit` of ``gt_json`` (made
    here when not given, and closed at the end) with PNGs in ``gt_dir``, or from a table."""
    if table:
        for video_id in segments_table.list_videos(table):
            yield VideoGroundTruth(video_id, table=table)
        return
    own = split is None
    split = VideoSplit(gt_json) if own else split
    try:
        for records in split.videos():
            yield from_records(records, gt_dir)
    finally:
        if own:
            split.close()
