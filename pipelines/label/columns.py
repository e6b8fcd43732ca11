"""The chunk row's columns: one definition that every stage of the labelling graph uses.

A chunk row is a dict of scalars (``video_id, uri, frame_start, frame_end, chunk_index,
frame_count, resume_from, error, stage``, ``t_<stage>``) and numpy arrays. Everything
structured travels as fixed numpy columns, never as JSON text: Ray Data keeps a column of arrays
as an Arrow tensor column (one shape when the rows agree, else variable-shaped), moves it between
processes as one buffer, and the next stage gets the arrays back without parsing anything.
Ray Data's cost per tensor column and move is fixed and larger than the copying of these small
arrays (~0.25 ms per column and move, measured), so a record is one row of one int64 matrix rather
than a column per field. ``tests/benchmarks/bench_chunk_columns.py`` measures it all against
the JSON columns the rows carried before.

The columns each stage adds (``n``: the row's frames, ``S``: their segments, ``k``: the row's
annotated frames, ``G``: their GT segments) are :data:`PLAN`, :data:`DECODE`, :data:`SEGMENT`,
:data:`FLOW` and, for the rows out of the associate stage, :data:`TRACKED`. A row that failed
gets its stage's columns empty (:func:`blank`), so that it has the schema of the others.

Segment records (``segments_info``) are one column, ``segments (S, 11) int64``
(:data:`SEGMENT_FIELDS`: the record's frame in the row, its fields, its score; frame after frame;
:func:`segment_columns`, :func:`segments_of`); the GT's are ``gt_segments``. A frame's GT
record (:class:`GtFrame`) is a row of ``gt_images (k, 4) int64`` and ``gt_names (k, 5) str``
plus its segments (:func:`gt_columns`, :func:`gt_of`). Frame times are ``frame_times (n, 2)
int64``: (1 where the source has a time, ``timestamp_ns``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from operators.formats.panoptic import SegmentInfo
from operators.formats.vps_layout import VpsImage


@dataclass(frozen=True)
class Column:
    """One array column of a chunk row: ``(rows, *tail)`` of ``dtype`` per row."""

    dtype: type
    tail: tuple[int, ...] = ()

    def empty(self) -> np.ndarray:
        return np.zeros((0, *self.tail), self.dtype)


SEGMENT_FIELDS = ("frame", "id", "category_id", "area", "x", "y", "w", "h", "iscrowd", "scored", "score")
"""The columns of ``segments``: the record's frame (its position among the row's frames), a
:class:`SegmentInfo` (``bbox`` = x, y, w, h), whether it has a score (0: ``score`` is None) and
the score as the bits of its float64 (exact, and the record stays one int64 row)."""
_SCORE = SEGMENT_FIELDS.index("score")


GT = {"gt_images": Column(np.int64, (4,)), "gt_names": Column(np.str_, (5,)),
      "gt_segments": Column(np.int64, (len(SEGMENT_FIELDS),))}
"""The row's annotated frames: ``gt_images`` (frame index, width, height, 1 where the image id is
an int), ``gt_names`` (image id, file name, the image's video id, the GT PNG's URI, the GT table's
root or ""), their segments."""
TIMES = {"frame_times": Column(np.int64, (2,))}
PLAN = {"image_ids": Column(np.str_), **GT}
"""Added by plan: each frame's image id, the chunk's GT records."""
DECODE = {"rgb": Column(np.uint8, (1, 1, 3)), "prev_rgb": Column(np.uint8, (1, 1, 3)), **TIMES}
"""Added by decode: ``rgb (n, H, W, 3) uint8``, ``prev_rgb (0|1, H, W, 3) uint8`` (the frame
before the chunk, for the flow at its boundary), each frame's time."""
SEGMENT = {"panoptic": Column(np.int32, (1, 1)), "segments": Column(np.int64, (len(SEGMENT_FIELDS),)),
           "embeddings": Column(np.float32, (0,))}
"""Added by segment: ``panoptic (n, H, W) int32``, the segment records, ``embeddings (S, D)
float32`` (one row per segment, in segment order)."""
FLOW = {"flow": Column(np.float32, (1, 1, 2))}
"""Added by flow: ``flow (n, H, W, 2) float32`` (current → previous; a video's frame 0 has none)."""
TRACKED = {"frame_indices": Column(np.int64), "image_ids": Column(np.str_), **TIMES,
           "frame_errors": Column(np.str_), "panoptic": Column(np.int32, (1, 1)), "segments": SEGMENT["segments"],
           **GT, "rgb_frames": Column(np.int64), "rgb": DECODE["rgb"]}
"""The associate stage's rows: the frames that became trackable (``m`` of them, possibly of
earlier chunks), with their image ids, times, errors (empty: tracked), track-id maps
``panoptic (m, H, W) int32``, segment records and GT records; the pixels of those the sink
renders (overlay, thumbnail): ``rgb (k, H, W, 3) uint8`` of frames ``rgb_frames (k,) int64``
(none when the run renders nothing)."""


def blank(*schemas: Mapping[str, Column]) -> Callable[[dict], None]:
    """A stage's ``blank``: gives a row the columns of ``schemas``, empty."""
    def fill(row: dict) -> None:
        for schema in schemas:
            for name, column in schema.items():
                row[name] = column.empty()
    return fill


def strings(values: Iterable[str]) -> np.ndarray:
    """``(n,) str`` (numpy's fixed-width unicode; an empty list gives an empty column)."""
    return np.array(list(values), np.str_)


# ---------------------------------------------------------------------------- segment records
def segment_columns(frames: Iterable[Sequence[SegmentInfo]], prefix: str = "") -> dict[str, np.ndarray]:
    """The segment records of a row's frames (one list per frame) as its ``segments`` column."""
    flat = [(frame, s) for frame, segments in enumerate(frames) for s in segments]
    fields = np.array([(frame, s.id, s.category_id, s.area, *s.bbox, s.iscrowd, s.score is not None, 0)
                       for frame, s in flat], np.int64).reshape(len(flat), len(SEGMENT_FIELDS))
    fields[:, _SCORE] = np.array([0.0 if s.score is None else s.score for _, s in flat], np.float64).view(np.int64)
    return {f"{prefix}segments": fields}


def segments_of(row: Mapping, frames: int, prefix: str = "") -> list[list[SegmentInfo]]:
    """The segment records of a row's ``frames`` frames, one list per frame (:func:`segment_columns` back)."""
    fields = row[f"{prefix}segments"]
    scores = fields[:, _SCORE].view(np.float64).tolist()
    out: list[list[SegmentInfo]] = [[] for _ in range(frames)]
    for (frame, i, c, area, x, y, w, h, crowd, scored, _), score in zip(fields.tolist(), scores):
        out[frame].append(SegmentInfo(i, c, area, (x, y, w, h), crowd, score if scored else None))
    return out


# ---------------------------------------------------------------------------- GT records
@dataclass
class GtFrame:
    """One annotated GT frame of a video: where its pixels are (its PNG, or ``table``: the segments
    table whose partition of the video holds the frame's masks) and its segments_info."""

    image: VpsImage
    png_uri: str
    segments: list[SegmentInfo]
    table: str = ""

    def to_json(self) -> dict:
        return {"image": self.image.to_json(), "png_uri": self.png_uri,
                "segments": [s.to_json() for s in self.segments], "table": self.table}

    @classmethod
    def from_json(cls, record: dict) -> "GtFrame":
        return cls(VpsImage(**record["image"]), record["png_uri"],
                   [SegmentInfo.from_json(s) for s in record["segments"]], record.get("table", ""))


def gt_columns(frames: Iterable[GtFrame]) -> dict[str, np.ndarray]:
    """A row's GT records (its annotated frames, any order) as the :data:`GT` columns. An image id
    that is neither an int nor a str (the GT JSON allows any value) comes back as its str."""
    frames = list(frames)
    images = np.array([(g.image.frame_index, g.image.width, g.image.height, type(g.image.id) is int) for g in frames],
                      np.int64).reshape(len(frames), 4)
    names = np.array([(str(g.image.id), g.image.file_name, g.image.video_id, g.png_uri, g.table) for g in frames],
                     np.str_).reshape(len(frames), 5)
    return {"gt_images": images, "gt_names": names, **segment_columns((g.segments for g in frames), "gt_")}


def gt_of(row: Mapping) -> dict[int, GtFrame]:
    """frame index → GT record of a row's annotated frames (:func:`gt_columns` back)."""
    out = {}
    for (index, width, height, int_id), (image_id, file_name, video_id, png_uri, table), segments in zip(
            row["gt_images"].tolist(), row["gt_names"].tolist(), segments_of(row, len(row["gt_images"]), "gt_")):
        image = VpsImage(int(image_id) if int_id else image_id, file_name, width, height, video_id, index)
        out[index] = GtFrame(image, png_uri, segments, table)
    return out


# ---------------------------------------------------------------------------- frame times
def time_columns(times: Iterable[int | None]) -> dict[str, np.ndarray]:
    """Each frame's ``timestamp_ns`` (None: the source has none) as ``frame_times``."""
    times = list(times)
    return {"frame_times": np.array([(t is not None, t or 0) for t in times], np.int64).reshape(len(times), 2)}


def times_of(row: Mapping) -> list[int | None]:
    return [t if timed else None for timed, t in row["frame_times"].tolist()]
