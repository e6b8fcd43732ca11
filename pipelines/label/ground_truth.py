"""The labelling run's ground truth (``--gt``, a manifest's per-video ``gt``), never held whole
by the driver.

``--gt`` is a GT JSON (the Cityscapes-VPS layout, PNGs in ``--gt-dir``) or a segments table
(the product's own format: Parquet, hive-partitioned by video), told apart by
:func:`operators.formats.ground_truth.gt_layout`, the check ``tubeflow evaluate`` makes too.

* **The door** (:meth:`RunGroundTruth.open`, before the output is touched): a GT JSON is split
  per video as a stream by :class:`~operators.formats.vps_stream.VideoSplit` (into a SQLite file
  on local disk, where ``evaluate`` writes its split; every record is checked on the way, so a
  bad file fails here, naming it); a table is listed. The categories come from the split (read
  as a stream) or the table's ``_categories.json``; with only a manifest's per-video GTs, from
  the first of them that has readable categories.
* **Per-video references**: once the run holds the output, :meth:`RunGroundTruth.refs` writes
  each video to label its own small GT JSON under the run's staging
  (``_staging/<run>/gt/<video key>.json``: in the output store, so every node of a cluster reads
  it; removed with the run's staging, also when the run fails) and deletes the split. A video's
  input row then carries only its :class:`GtRef`: that document, or the table and the video id,
  or a manifest's per-video GT file as it is.
* **The tasks read it**: the plan task (:func:`pipelines.label.stages.plan_video`) reads the
  video's GT (:func:`read_video_gt`), names its frames and puts each annotated frame's
  :class:`GtFrame` on its chunk row; the sink reads the frame's GT pixels (its PNG, or the
  table's masks: :func:`table_frames`, :func:`gt_frame_inputs`) and finalize reads the reference
  again for the video's annotated frames. A video whose GT cannot be read fails alone, naming
  the file.

No Ray here: these are plain functions over files, which the stages call inside their tasks.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from operators import fs
from operators.errors import InputError, TubeflowError
from operators.formats import segments_table
from operators.formats.categories import Category
from operators.formats.ground_truth import gt_layout
from operators.formats.panoptic import PanopticFrame, SegmentInfo
from operators.formats.vps_layout import VpsImage, read_ground_truth
from operators.formats.vps_stream import VideoRecords, VideoSplit, read_categories
from operators.ids import video_key
from operators.metrics.video import FrameInputs
from pipelines.label.columns import GtFrame
from pipelines.commit import remove_tree

GT_DOCS_DIR = "gt"
"""The per-video GT documents of a run, under its staging (``_staging/<run>/gt/``)."""


@dataclass(frozen=True)
class GtRef:
    """Where one video's GT is, small enough for an input row: a GT JSON holding the video (a
    per-video document of the run, or a manifest's GT file) with its PNG directory, or a
    segments table whose partition of the video holds it."""

    video_id: str
    doc: str = ""
    png_dir: str = ""
    table: str = ""

    def to_text(self) -> str:
        return json.dumps({k: v for k, v in (("video_id", self.video_id), ("doc", self.doc),
                                             ("png_dir", self.png_dir), ("table", self.table)) if v})

    @classmethod
    def from_text(cls, text: str) -> "GtRef":
        return cls(**json.loads(text))

    @property
    def where(self) -> str:
        return segments_table.partition_dir(self.table, self.video_id) if self.table else self.doc


@dataclass
class VideoGt:
    """One video's GT as the stages use it: the image id of each frame the GT names
    (``{frame_index: image_id}``) and its annotated frames in frame order."""

    names: dict[int, str] = field(default_factory=dict)
    frames: list[GtFrame] = field(default_factory=list)


def read_video_gt(ref: GtRef) -> VideoGt:
    """The GT of ``ref``'s video, read and checked here (in the task that needs it). A GT JSON
    holding other videos gives the video's images, or all of them when it holds one video only
    (a manifest's per-video GT may name its video differently); a table gives the frames that
    have rows. Raises :class:`InputError` naming the file for bad input."""
    if ref.table:
        return _table_video_gt(ref)
    gt = read_ground_truth(ref.doc, ref.png_dir)
    videos = gt.videos()
    images = videos.get(ref.video_id) or (next(iter(videos.values())) if len(videos) == 1 else [])
    return VideoGt({image.frame_index: str(image.id) for image in images},
                   [GtFrame(image, gt.png_uri(image), gt.annotations[image.key].segments)
                    for image in images if image.key in gt.annotations])


def _table_video_gt(ref: GtRef) -> VideoGt:
    """A table video's frames from its rows, masks not decoded (the sink decodes the frames it scores)."""
    rows = segments_table.table_to_rows(segments_table.read_video_rows(ref.table, ref.video_id))
    if not rows:
        raise InputError(ref.where, f"no GT rows for video {ref.video_id}")
    by_frame: dict[int, list] = {}
    for row in rows:
        by_frame.setdefault(row.frame_index, []).append(row)
    frames = []
    for index in sorted(by_frame):
        first = by_frame[index][0]
        height, width = (int(v) for v in first.mask["size"])
        image = VpsImage(first.image_id, "", width, height, ref.video_id, index)
        frames.append(GtFrame(image, "", [SegmentInfo(int(r.track_id), int(r.category_id), int(r.area),
                                                      tuple(int(v) for v in r.bbox), int(r.iscrowd),
                                                      None if r.score is None else float(r.score))
                                          for r in by_frame[index]], ref.table))
    return VideoGt({f.image.frame_index: str(f.image.id) for f in frames}, frames)


def frame_image_id(names: Mapping[int, str], image_id_format: str, video_id: str, frame_index: int) -> str:
    """A frame's image id: the GT's name for it, else ``image_id_format``'s."""
    return names.get(frame_index) or image_id_format.format(video_id=video_id, frame_index=frame_index)


def table_frames(video_id: str, frames: Iterable[GtFrame]) -> dict[int, PanopticFrame]:
    """frame_index → the GT frame rebuilt from its table rows, for the frames of ``frames`` whose
    GT is a table (one read of the video's partition; only those frames' masks are decoded)."""
    wanted = [f for f in frames if f.table]
    if not wanted:
        return {}
    table = wanted[0].table
    rows = segments_table.read_video_rows(table, video_id)
    rows = rows.filter(pc.is_in(rows["frame_index"], pa.array([f.image.frame_index for f in wanted], pa.int32())))
    return {f.frame_index: f.frame for f in segments_table.iter_table_frames(rows)}


def gt_frame_inputs(gt: GtFrame, prediction: PanopticFrame, pred_where: str,
                    pixels: Mapping[int, PanopticFrame]) -> FrameInputs:
    """What :func:`operators.metrics.video.frame_inputs_table` scores for one annotated frame
    against a prediction already in memory: the GT as ``tubeflow evaluate`` gives it, a PNG URI
    with its segments_info, or a table's frame (``pixels``, :func:`table_frames`) with the
    segments its rows rebuild."""
    if not gt.table:
        return FrameInputs(gt.image, gt.png_uri, gt.segments, pred_where, prediction.segments, pred_frame=prediction)
    where = segments_table.partition_dir(gt.table, gt.image.video_id)
    frame = pixels.get(gt.image.frame_index)
    if frame is None:
        raise InputError(where, f"no GT rows for frame {gt.image.frame_index} of video {gt.image.video_id}")
    return FrameInputs(gt.image, where, frame.segments, pred_where, prediction.segments, gt_frame=frame,
                       pred_frame=prediction)


# ---------------------------------------------------------------------------- the driver's side
def video_document(records: VideoRecords, categories_json: str) -> bytes:
    """One video of a split GT JSON as a GT JSON of its own (images, annotations, categories),
    the records' text spliced in as read."""
    images = ",".join(json.dumps(f.image.to_json()) for f in records.frames)
    annotations = ",".join(f'{{"image_id": {json.dumps(f.image.id)}, "file_name": {json.dumps(f.gt_file)}, '
                           f'"segments_info": {f.gt_segments_json}}}' for f in records.frames if f.gt_file is not None)
    return f'{{"images": [{images}], "annotations": [{annotations}], "categories": {categories_json}}}'.encode()


class RunGroundTruth:
    """The GT of a run as the driver holds it: its categories and how to refer each video to
    its GT, never the records (see module doc). Open with :meth:`open`."""

    def __init__(self, categories: dict[int, Category] | None, gt_uri: str = "", png_dir: str = "",
                 layout: str = "", split: VideoSplit | None = None, per_video: dict[str, str] | None = None):
        self.categories, self.gt_uri, self.png_dir, self.layout = categories, gt_uri, png_dir, layout
        self.split = split
        self.per_video = per_video or {}  # video_id → a manifest's GT JSON of that video
        self.docs = ""  # where refs() wrote the per-video documents

    @classmethod
    @contextlib.contextmanager
    def open(cls, gt_uri: str | None, gt_dir: str | None, per_video: dict[str, str]) -> Iterator["RunGroundTruth"]:
        """The run's GT checked at the door: ``gt_uri`` (``--gt``: a GT JSON or a table, None:
        none) and ``per_video`` (video_id → a manifest's GT JSON). Closing deletes the split."""
        categories, layout, split = None, "", None
        if gt_uri:
            layout = gt_layout(gt_uri)
            if layout == "table":
                segments_table.list_videos(gt_uri)  # a table that cannot be listed fails here
                categories = segments_table.read_table_categories(gt_uri)
            else:
                split = VideoSplit(gt_uri)
                categories = split.categories
        try:
            if categories is None:
                categories = _first_categories(per_video.values())
            yield cls(categories, gt_uri or "", gt_dir or "", layout, split, per_video)
        finally:
            if split is not None:
                split.close()

    def refs(self, video_ids: list[str], staging: str) -> dict[str, GtRef]:
        """video_id → :class:`GtRef` of each of ``video_ids`` (the videos to label) that has a GT;
        a GT JSON's videos are written to their own documents under ``staging`` (in parallel)
        and the split is deleted. A manifest's per-video GT wins over ``--gt``."""
        wanted = set(video_ids)
        refs: dict[str, GtRef] = {}
        if self.layout == "table":
            refs = {v: GtRef(v, table=self.gt_uri) for v in segments_table.list_videos(self.gt_uri) if v in wanted}
        elif self.split is not None:
            self.docs = fs.join(staging, GT_DOCS_DIR)
            categories_json = json.dumps([c.to_json() for c in self.categories.values()])

            def write(records: VideoRecords) -> str:
                uri = fs.join(self.docs, f"{video_key(records.video_id)}.json")
                fs.write_bytes(uri, video_document(records, categories_json))
                return records.video_id

            videos = (r for r in self.split.videos() if r.video_id in wanted)
            for video_id in fs.map_io(write, videos):
                refs[video_id] = GtRef(video_id, doc=fs.join(self.docs, f"{video_key(video_id)}.json"),
                                       png_dir=self.png_dir)
            self.split.close()
            self.split = None
        for video_id, uri in self.per_video.items():
            if video_id in wanted:
                refs[video_id] = GtRef(video_id, doc=uri, png_dir=fs.join(uri.rsplit("/", 1)[0], "panoptic"))
        return refs

    def remove_documents(self) -> None:
        """Delete the per-video documents :meth:`refs` wrote (the run is over, or failed)."""
        if self.docs:
            remove_tree(self.docs)


def _first_categories(uris: Iterable[str]) -> dict[int, Category] | None:
    """The categories of the first GT JSON of ``uris`` that has readable ones (read as a stream);
    None when none has (each video then fails on its own GT)."""
    for uri in uris:
        try:
            return read_categories(uri)
        except TubeflowError:
            continue
    return None
