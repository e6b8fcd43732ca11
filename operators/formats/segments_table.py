"""The Parquet segments table: one row per (video_id, frame_index, segment).

Each row is one panoptic segment of one frame, with its mask as COCO run-length encoding
(RLE, pycocotools' column-major "compressed counts"), so any Arrow reader (DuckDB,
Polars, pandas, Spark) can filter segments by video, class or track without touching
pixels, and ``pycocotools.mask.decode`` turns a mask back into pixels. A frame's rows
rebuild its PanopticFrame exactly: PNG → table → PNG is lossless.

On disk the table is hive-partitioned by video: ``ROOT/video_key=<key>/part-<a>-<b>.parquet``
(``<key>`` the id's path key, :func:`operators.ids.video_key`; ``a``..``b`` the first and last
frame in the file), one file per write of a video's rows. The files carry the original
``video_id`` as a column: the partition's name is only an encoded form of it, and readers that
infer partition types (Polars reads ``video_id=0000`` as the integer 0) would otherwise change it. The partition
key is named ``video_key`` so that it never clashes with the column in DuckDB or Polars.
Tables written before (``video_id=<id>`` directories, no column in the files) are still read.
File names are deterministic, so a retried chunk overwrites its own file instead of adding
duplicate rows; every file is written atomically.

``timestamp_ns`` is the frame's time (a log's header stamp, a container's presentation time;
null for frame directories), and ``source_uri`` / ``topic`` say where the frame came from (a
log and its camera topic; topic null for containers and frame directories), so labels can be
joined with the other sensors of a drive.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Mapping
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError
from operators.formats.categories import CITYSCAPES_CATEGORIES, Category
from operators.formats.panoptic import VOID, PanopticFrame, SegmentInfo, validate_frame
from operators.ids import id_of_key, video_key


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


RLE_TYPE = pa.struct([
    _field("size", pa.list_(pa.int32()), "[height, width] of the frame"),
    _field("counts", pa.binary(), "COCO compressed RLE counts (pycocotools, column-major / Fortran order)"),
])

SEGMENTS_SCHEMA = pa.schema([
    _field("video_id", pa.string(), "video identity (a log's camera: <log id>:<topic>); on disk also "
                                    "encoded in the partition directory video_key=<key>"),
    _field("frame_index", pa.int32(), "0-based frame number within the video"),
    _field("timestamp_ns", pa.int64(), "the frame's time in ns: a log message's header stamp (its log time "
                                       "when the stamp is zero); a container's presentation time from the "
                                       "stream start, plus its recorded creation time (Unix) if any; null for "
                                       "frame directories", nullable=True),
    _field("image_id", pa.string(), "image id of the frame (Cityscapes-VPS image id / file stem)"),
    _field("track_id", pa.int64(), "panoptic segment id (R + 256G + 65536B in the PNG); for things the "
                                   "identity of the object, the same in every frame of the video"),
    _field("category_id", pa.int32(), "semantic class (Cityscapes-VPS: 0-18, things 11-18)"),
    _field("isthing", pa.bool_(), "the class is a countable thing (has instances), not stuff"),
    _field("iscrowd", pa.bool_(), "a crowd region: a group of things without individual identity"),
    _field("area", pa.int64(), "mask area in pixels"),
    _field("bbox", pa.list_(pa.int32()), "[x, y, w, h] of the mask, in pixels"),
    _field("score", pa.float32(), "prediction confidence; null for ground truth", nullable=True),
    _field("mask", RLE_TYPE, "the segment's pixels as COCO RLE: {size: [H, W], counts}"),
    _field("source_uri", pa.string(), "the video file or log the frame was read from", nullable=True),
    _field("topic", pa.string(), "the log's camera topic; null for containers and frame directories",
           nullable=True),
], metadata={"tubeflow.table": "segments", "tubeflow.version": "2",
             "doc": "one row per (video_id, frame_index, segment) of a video panoptic segmentation"})

# What a Parquet file holds: every column, video_id included (the directory name is an encoding of it).
FILE_SCHEMA = SEGMENTS_SCHEMA
PARTITION_KEY = "video_key"
_LEGACY_PARTITION_KEY = "video_id"  # tables of version 1: the id only in the directory name


@dataclass
class SegmentRow:
    """One row of the segments table. ``mask`` is a COCO RLE dict ``{"size": [H, W], "counts": bytes}``."""

    video_id: str
    frame_index: int
    image_id: str
    track_id: int
    category_id: int
    isthing: bool
    iscrowd: bool
    area: int
    bbox: tuple[int, int, int, int]
    score: float | None
    mask: dict
    timestamp_ns: int | None = None
    source_uri: str | None = None
    topic: str | None = None


def encode_mask(mask: np.ndarray) -> dict:
    """``(H, W)`` bool mask → COCO RLE ``{"size": [H, W], "counts": bytes}``."""
    return mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))


def decode_mask(rle: Mapping, where: str = "mask") -> np.ndarray:
    """COCO RLE → ``(H, W)`` bool mask. Raises :class:`CorruptFileError` for a malformed RLE.

    pycocotools decodes damaged counts without complaint (into pixels that were never
    there), so the mask is re-encoded and must give back the same counts: pycocotools'
    compressed counts are canonical (one string per mask).
    """
    try:
        size = [int(v) for v in rle["size"]]
        counts = rle["counts"]
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"size must be [H, W] > 0, got {size}")
        counts = _counts_bytes(counts)
        mask = mask_utils.decode({"size": size, "counts": counts})
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(where, f"malformed COCO RLE: {exc}") from None
    if mask_utils.encode(mask)["counts"] != counts:
        raise CorruptFileError(where, f"COCO RLE counts do not describe a {size[1]}x{size[0]} (WxH) mask")
    return mask.astype(bool)


def _counts_bytes(counts: bytes | str) -> bytes:
    """RLE counts as bytes: Parquet gives binary, JSON-born RLEs carry text."""
    return counts.encode() if isinstance(counts, str) else bytes(counts)


def frame_to_rows(frame: PanopticFrame, video_id: str, frame_index: int, image_id: str,
                  categories: Mapping[int, Category] | Iterable[Category] = CITYSCAPES_CATEGORIES, *,
                  timestamp_ns: int | None = None, source_uri: str | None = None,
                  topic: str | None = None) -> list[SegmentRow]:
    """The rows of one frame, in ``frame.segments`` order (``timestamp_ns``, ``source_uri`` and
    ``topic`` are the frame's, the same on every row).

    The frame is validated first (PNG ids and segments_info agree, categories known), so the
    rows hold every non-VOID pixel. ``area`` and ``bbox`` are computed from the mask, the
    pixels being the truth. ``score`` is stored as float32.
    """
    by_id = categories if isinstance(categories, Mapping) else {c.id: c for c in categories}
    where = f"video {video_id} frame {frame_index}"
    validate_frame(frame, where, by_id.keys())
    # RLE runs go down columns: compare on a column-major copy (made once) so that each
    # segment's mask is already in the layout pycocotools encodes, without a copy per segment.
    ids_f = np.asfortranarray(frame.ids)
    rows = []
    for seg in frame.segments:
        rle = mask_utils.encode((ids_f == seg.id).view(np.uint8))
        x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
        rows.append(SegmentRow(str(video_id), int(frame_index), str(image_id), int(seg.id), int(seg.category_id),
                               bool(by_id[seg.category_id].isthing), bool(seg.iscrowd), int(mask_utils.area(rle)),
                               (x, y, w, h), seg.score, {"size": [int(v) for v in rle["size"]],
                                                         "counts": rle["counts"]},
                               None if timestamp_ns is None else int(timestamp_ns), source_uri, topic))
    return rows


def rows_to_batch(rows: Iterable[SegmentRow]) -> pa.RecordBatch:
    """Rows → a RecordBatch with :data:`SEGMENTS_SCHEMA`."""
    return pa.RecordBatch.from_pylist([asdict(r) for r in rows], schema=SEGMENTS_SCHEMA)


def frame_to_batch(frame: PanopticFrame, video_id: str, frame_index: int, image_id: str,
                   categories: Mapping[int, Category] | Iterable[Category] = CITYSCAPES_CATEGORIES,
                   **where) -> pa.RecordBatch:
    """One frame → its RecordBatch (see :func:`frame_to_rows`; ``where``: ``timestamp_ns``,
    ``source_uri``, ``topic``)."""
    return rows_to_batch(frame_to_rows(frame, video_id, frame_index, image_id, categories, **where))


def table_to_rows(table: pa.Table | pa.RecordBatch) -> list[SegmentRow]:
    """Rows of a table or batch with (at least) the columns of :data:`SEGMENTS_SCHEMA`."""
    names = SEGMENTS_SCHEMA.names
    rows = [SegmentRow(**{k: rec[k] for k in names}) for rec in table.select(names).to_pylist()]
    for row in rows:
        row.bbox = tuple(row.bbox)
    return rows


def rows_to_frame(rows: Iterable[SegmentRow] | pa.Table | pa.RecordBatch,
                  size: tuple[int, int] | None = None) -> PanopticFrame:
    """Paint one frame's rows back into a :class:`PanopticFrame` (``(H, W) int32`` ids).

    A frame with no segments has no rows: pass its ``size`` (H, W) to rebuild it (all VOID).
    Raises :class:`FormatMismatchError` when rows disagree (two frames mixed, sizes that
    differ, overlapping masks, a track id twice, area or bbox that are not the mask's) and
    :class:`CorruptFileError` for a mask that does not decode.
    """
    if isinstance(rows, (pa.Table, pa.RecordBatch)):
        rows = table_to_rows(rows)
    rows = list(rows)
    if not rows:
        if size is None:
            raise ValueError("a frame without rows needs its size to be rebuilt")
        return PanopticFrame(np.zeros(size, np.int32), [])
    where = f"video {rows[0].video_id} frame {rows[0].frame_index}"
    if len({(r.video_id, r.frame_index) for r in rows}) != 1:
        raise FormatMismatchError(where, "rows of more than one frame given for one frame")
    shape = tuple(int(v) for v in rows[0].mask["size"])
    if size is not None and tuple(size) != shape:
        raise FormatMismatchError(where, f"masks are {shape[1]}x{shape[0]} (WxH), expected {size[1]}x{size[0]}")
    ids = np.full(shape, VOID, np.int32)
    segments = []
    for row in rows:
        if tuple(int(v) for v in row.mask["size"]) != shape:
            raise FormatMismatchError(where, f"track {row.track_id}: mask size {row.mask['size']} differs from {shape}")
        if row.track_id == VOID or any(s.id == row.track_id for s in segments):
            raise FormatMismatchError(where, f"track id {row.track_id} is VOID or appears twice")
        mask = decode_mask(row.mask, f"{where} track {row.track_id}")
        # Paint inside the mask's bounding box only: a segment is usually a small part of a frame.
        rle = {"size": list(shape), "counts": _counts_bytes(row.mask["counts"])}
        bbox = tuple(int(v) for v in mask_utils.toBbox(rle))
        x, y, w, h = bbox
        box, inside = ids[y:y + h, x:x + w], mask[y:y + h, x:x + w]
        if np.any(box[inside] != VOID):
            raise FormatMismatchError(where, f"the mask of track {row.track_id} overlaps another segment")
        if int(inside.sum()) != row.area or bbox != tuple(row.bbox):
            raise FormatMismatchError(where, f"track {row.track_id}: area {row.area} and bbox {list(row.bbox)} but "
                                             f"its mask has {int(inside.sum())} pixels in {list(bbox)}")
        box[inside] = row.track_id
        segments.append(SegmentInfo(int(row.track_id), int(row.category_id), int(row.area),
                                    tuple(int(v) for v in row.bbox), int(row.iscrowd),
                                    None if row.score is None else float(row.score)))
    return PanopticFrame(ids, segments)


@dataclass
class TableFrame:
    """A frame rebuilt from the table, with its identity."""

    video_id: str
    frame_index: int
    image_id: str
    frame: PanopticFrame


def iter_table_frames(table: pa.Table) -> Iterator[TableFrame]:
    """Every frame that has rows, in (video_id, frame_index) order; rows keep their order
    within a frame (the sort is stable)."""
    table = table.sort_by([("video_id", "ascending"), ("frame_index", "ascending")])
    rows = table_to_rows(table)
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or (rows[end].video_id, rows[end].frame_index) != (rows[start].video_id,
                                                                                 rows[start].frame_index):
            first = rows[start]
            yield TableFrame(first.video_id, first.frame_index, first.image_id, rows_to_frame(rows[start:end]))
            start = end


def partition_dir(root_uri: str, video_id: str) -> str:
    """``ROOT/video_key=<key>``: the id's path key (:func:`operators.ids.video_key`)."""
    return fs.join(root_uri, f"{PARTITION_KEY}={video_key(video_id)}")


def _legacy_partition_dirs(root_uri: str, video_id: str) -> list[str]:
    """Where tables written before the ``video_key`` partitions kept a video's files: under the
    id rule (``video_id=<key>``) and before it (``video_id=<urllib quote>``)."""
    dirs = [fs.join(root_uri, f"{_LEGACY_PARTITION_KEY}={video_key(video_id)}"),
            fs.join(root_uri, f"{_LEGACY_PARTITION_KEY}={quote(str(video_id), safe='')}")]
    return list(dict.fromkeys(dirs))


def write_segments_table(root_uri: str,
                         data: pa.Table | pa.RecordBatch | Iterable[pa.Table | pa.RecordBatch]) -> list[str]:
    """Write rows under ``root_uri``, one Parquet file per video present in ``data``.

    Returns the URIs written. A file is named by the first and last frame it holds, so
    writing the same chunk again replaces it; chunks of one video must not overlap.
    """
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        data = [data]
    parts = [p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in data]
    table = pa.concat_tables(parts, promote_options="permissive") if parts else SEGMENTS_SCHEMA.empty_table()
    if not table.schema.equals(SEGMENTS_SCHEMA, check_metadata=False):
        table = table.select(SEGMENTS_SCHEMA.names).cast(SEGMENTS_SCHEMA)
    written = []
    for video_id in pc.unique(table["video_id"]).to_pylist():
        part = table.filter(pc.equal(table["video_id"], video_id))
        part = part.replace_schema_metadata(FILE_SCHEMA.metadata)
        first, last = pc.min(part["frame_index"]).as_py(), pc.max(part["frame_index"]).as_py()
        uri = fs.join(partition_dir(root_uri, video_id), f"part-{first:08d}-{last:08d}.parquet")
        with fs.atomic_write(uri) as f:
            pq.write_table(part.cast(FILE_SCHEMA), f)
        written.append(uri)
    return written


def read_segments_table(root_uri: str, video_ids: Iterable[str] | None = None,
                        columns: list[str] | None = None) -> pa.Table:
    """Read the table under ``root_uri`` (any fsspec URI) sorted by (video_id, frame_index).

    ``video_ids`` prunes partitions; ``columns`` selects columns (all by default).
    """
    filesystem, path = fs.fresh(root_uri)
    path = path.rstrip("/")
    if not filesystem.exists(path):
        raise CorruptFileError(root_uri, "segments table not found")
    # List the files ourselves: a staging file left by a killed writer must not be read.
    files = sorted(f for f in filesystem.find(path) if f.endswith(".parquet") and "/." not in f[len(path):])
    import pyarrow.dataset as ds  # here: it imports pandas (seconds), which the per-video readers never need

    wanted = None if video_ids is None else {str(v) for v in video_ids}
    current, legacy = [], []
    for f in files:
        key, _, value = f[len(path):].lstrip("/").split("/", 1)[0].partition("=")
        if wanted is not None and (id_of_key(value) or unquote(value)) not in wanted:
            continue  # partition pruning: only the directories of the videos asked for
        (legacy if key == _LEGACY_PARTITION_KEY else current).append(f)
    tables = []
    try:
        if current:
            tables.append(ds.dataset(current, schema=SEGMENTS_SCHEMA, format="parquet",
                                     filesystem=filesystem).to_table())
        if legacy:
            partitioning = ds.partitioning(pa.schema([SEGMENTS_SCHEMA.field("video_id")]), flavor="hive")
            tables.append(ds.dataset(legacy, schema=SEGMENTS_SCHEMA, format="parquet", filesystem=filesystem,
                                     partitioning=partitioning, partition_base_dir=path).to_table())
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFileError(root_uri, f"cannot read the segments table: {exc}") from None
    table = pa.concat_tables(tables) if tables else SEGMENTS_SCHEMA.empty_table()
    if wanted is not None:
        table = table.filter(pc.is_in(table["video_id"], pa.array(sorted(wanted), pa.string())))
    table = table.sort_by([("video_id", "ascending"), ("frame_index", "ascending")])
    return table.select(columns or SEGMENTS_SCHEMA.names)


def read_video_rows(root_uri: str, video_id: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of one video sorted by frame_index, read from its partition directory only
    (one listing of that directory, never of the whole table: a task scoring one video of
    100,000 reads what it needs). A video absent from the table has no rows."""
    names, filesystem = [], None
    for directory in [partition_dir(root_uri, video_id), *_legacy_partition_dirs(root_uri, video_id)]:
        filesystem, path = fs.fresh(directory)
        try:
            names = filesystem.ls(path, detail=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CorruptFileError(directory, f"cannot list the partition: {exc}") from None
        break
    files = sorted(n for n in names if n.endswith(".parquet") and not n.rsplit("/", 1)[-1].startswith("."))
    parts = []
    for name in files:
        try:
            part = pq.read_table(name, filesystem=filesystem)
            # every column of the schema; an older file lacks video_id and the time columns (null)
            arrays = [pa.array([str(video_id)] * part.num_rows, pa.string()) if field.name == "video_id" else
                      part[field.name].cast(field.type) if field.name in part.column_names else
                      pa.nulls(part.num_rows, field.type) for field in SEGMENTS_SCHEMA]
            parts.append(pa.Table.from_arrays(arrays, schema=SEGMENTS_SCHEMA))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, KeyError) as exc:
            raise CorruptFileError(name, f"cannot read the segments table file: {exc}") from None
    table = pa.concat_tables(parts) if parts else SEGMENTS_SCHEMA.empty_table()
    table = table.sort_by([("frame_index", "ascending")])
    return table.select(columns or SEGMENTS_SCHEMA.names)


def video_frames(root_uri: str, video_id: str) -> dict[int, TableFrame]:
    """frame_index → the frame rebuilt from one video's rows (frames without rows are absent)."""
    return {f.frame_index: f for f in iter_table_frames(read_video_rows(root_uri, video_id))}


def list_videos(root_uri: str) -> list[str]:
    """The video ids of a table: its partition directories, sorted (one listing of the root)."""
    filesystem, path = fs.fresh(root_uri)
    try:
        names = filesystem.ls(path.rstrip("/"), detail=False)
    except FileNotFoundError:
        raise CorruptFileError(root_uri, "segments table not found") from None
    ids = set()
    for name in names:
        key, sep, value = name.rsplit("/", 1)[-1].partition("=")
        if sep and key in (PARTITION_KEY, _LEGACY_PARTITION_KEY):
            ids.add(id_of_key(value) or unquote(value))
    return sorted(ids)


CATEGORIES_FILE = "_categories.json"
"""The category table of a segments table, beside its partitions (``_``: Arrow, DuckDB and
Spark readers of the partitions skip it). Absent: the Cityscapes categories."""


def write_table_categories(root_uri: str, categories: Iterable[Category]) -> None:
    fs.write_bytes(fs.join(root_uri, CATEGORIES_FILE),
                   json.dumps({"categories": [c.to_json() for c in categories]}).encode())


def read_table_categories(root_uri: str) -> dict[int, Category]:
    """The table's categories (:data:`CATEGORIES_FILE`), or the Cityscapes ones when it has none."""
    uri = fs.join(root_uri, CATEGORIES_FILE)
    if not fs.exists(uri):
        return {c.id: c for c in CITYSCAPES_CATEGORIES}
    try:
        records = json.loads(fs.read_input(uri))["categories"]
        return {int(c["id"]): Category.from_json(c) for c in records}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(uri, f"invalid JSON: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatMismatchError(uri, f"malformed category table: {exc!r}") from None
