"""The Cityscapes-VPS layout read as a stream and split per video, for corpora whose GT JSON
or ``pred.json`` is too large to parse whole in one process.

A GT JSON holds ``images``, ``annotations`` and ``categories`` as three top-level arrays in
any order, and an annotation names its image only by id: no prefix of the file holds one
video's records. So each array is parsed one record at a time (ijson, yajl2 C backend) and
every record goes into a SQLite file on local disk, indexed by image id and by (video,
frame); :meth:`VideoSplit.videos` then joins image, GT annotation and prediction and yields
one video's records at a time, in video order. The process holds the record being read and
SQLite's page cache, whatever the size of the corpus; the split files are deleted on close.

Records are checked as they are read, with the rules of :func:`read_ground_truth` (a
malformed record, two annotations of one image, two images of one video frame: one error
naming the file).
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from typing import Iterator

import ijson

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError
from operators.formats.categories import Category
from operators.formats.panoptic import SegmentInfo
from operators.formats.vps_layout import (PRED_JSON, VpsImage, annotation_fields,
                                          categories_from_records, image_from_record, segments_from_records)

_BATCH = 2000  # rows per SQLite executemany


def iter_json_items(uri: str, prefix: str) -> Iterator[object]:
    """The values at ijson ``prefix`` of the JSON document in ``uri`` (``"images.item"``: the
    items of the top-level array ``images``), one at a time; a prefix not in the document
    yields nothing. Numbers with a fraction come as floats. A remote file is read through
    the local cache (each pass over it is then local)."""
    try:
        path = fs.local_copy(uri)
        with open(path, "rb") as f:
            yield from ijson.items(f, prefix, use_float=True)
    except ijson.JSONError as exc:  # yajl's message draws the spot on lines of its own: keep the first
        raise CorruptFileError(uri, f"invalid JSON: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
                               ) from None
    except FileNotFoundError:
        raise CorruptFileError(uri, "file not found") from None
    except OSError as exc:
        raise CorruptFileError(uri, f"cannot read the file: {exc.strerror or exc}") from None


def read_categories(gt_json: str) -> dict[int, Category]:
    """The category table of a GT JSON, read as a stream: only ``categories`` is held, however
    large the file's ``images`` and ``annotations`` are."""
    found = list(iter_json_items(gt_json, "categories"))
    if not found:
        raise FormatMismatchError(gt_json, "missing top-level key 'categories'")
    if not isinstance(found[0], list):
        raise FormatMismatchError(gt_json, f"'categories' must be a list, got {type(found[0]).__name__}")
    return categories_from_records(found[0], gt_json)


@dataclass
class FrameRecords:
    """One image of a video with its GT annotation and its prediction (``*_file`` None: there
    is none). The ``segments_info`` lists stay JSON text until :func:`parse_segments` (in the
    task that reads the frame: a malformed segment record is that video's error)."""

    image: VpsImage
    gt_file: str | None
    gt_segments_json: str
    pred_file: str | None
    pred_segments_json: str


@dataclass
class VideoRecords:
    """The records of one video, frames in frame order."""

    video_id: str
    frames: list[FrameRecords]


_SCHEMA = """
CREATE TABLE images (key TEXT PRIMARY KEY, id TEXT, file_name TEXT, width INTEGER, height INTEGER,
                     video_id TEXT, frame_index INTEGER) WITHOUT ROWID;
CREATE TABLE gt (key TEXT PRIMARY KEY, file_name TEXT, segments TEXT) WITHOUT ROWID;
CREATE TABLE pred (key TEXT PRIMARY KEY, file_name TEXT, segments TEXT) WITHOUT ROWID;
"""


class VideoSplit:
    """A GT JSON (and optionally a ``pred.json``) split per video into a SQLite file on
    local disk. Use as a context manager (or call :meth:`close`): the file is deleted.

    ``categories`` is the GT's category table; :meth:`videos` streams the videos.
    """

    def __init__(self, gt_json: str, pred_dir: str | None = None, workdir: str | None = None):
        self.gt_json = gt_json
        self.pred_json = fs.join(pred_dir, PRED_JSON) if pred_dir is not None else None
        self.pred_dir = pred_dir
        self._dir = tempfile.mkdtemp(prefix="tubeflow-split-", dir=workdir)
        try:
            self._db = sqlite3.connect(os.path.join(self._dir, "split.sqlite"), isolation_level=None)
            self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
            self.categories = self._read_categories()
            self.frames = self._load_images()
            self._load_annotations("gt", self.gt_json)
            if self.pred_json is not None:
                self._load_annotations("pred", self.pred_json)
            self.num_videos = self._db.execute("SELECT count(DISTINCT video_id) FROM images").fetchone()[0]
        except BaseException:
            self.close()
            raise

    # -- loading ------------------------------------------------------------------------
    def _read_categories(self) -> dict[int, Category]:
        return read_categories(self.gt_json)

    def _insert(self, table: str, rows: list[tuple], describe) -> None:
        marks = ",".join("?" * len(rows[0]))
        try:
            self._db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        except sqlite3.IntegrityError:
            seen = set()
            for row in rows:  # find the record that repeats a key (within the batch or before it)
                if row[0] in seen or self._db.execute(f"SELECT 1 FROM {table} WHERE key = ?", (row[0],)).fetchone():
                    raise describe(row) from None
                seen.add(row[0])
            raise

    def _load_images(self) -> int:
        batch, count = [], 0

        def duplicate(row):
            return FormatMismatchError(self.gt_json, f"two image records with id {json.loads(row[1])!r}")

        self._db.execute("BEGIN")
        for record in iter_json_items(self.gt_json, "images.item"):
            image = image_from_record(record, self.gt_json)
            batch.append((image.key, json.dumps(image.id), image.file_name, image.width, image.height,
                          image.video_id, image.frame_index))
            if len(batch) >= _BATCH:
                self._insert("images", batch, duplicate)
                count += len(batch)
                batch = []
        if batch:
            self._insert("images", batch, duplicate)
            count += len(batch)
        self._db.execute("COMMIT")
        if not count:
            raise FormatMismatchError(self.gt_json, "no image records (missing or empty top-level key 'images')")
        try:
            self._db.execute("CREATE UNIQUE INDEX frames ON images (video_id, frame_index)")
        except sqlite3.IntegrityError:
            video_id, frame_index, a, b = self._db.execute(
                "SELECT video_id, frame_index, min(id), max(id) FROM images GROUP BY video_id, frame_index "
                "HAVING count(*) > 1 LIMIT 1").fetchone()
            raise FormatMismatchError(self.gt_json, f"images {json.loads(a)!r} and {json.loads(b)!r} are both video "
                                                    f"{video_id} frame {frame_index}") from None
        return count

    def _load_annotations(self, table: str, uri: str) -> None:
        batch = []

        def duplicate(row):
            return FormatMismatchError(uri, f"two annotations for image {row[0]!r}")

        self._db.execute("BEGIN")
        for record in iter_json_items(uri, "annotations.item"):
            image_id, file_name, segments_info = annotation_fields(record, uri)
            batch.append((str(image_id), file_name, json.dumps(segments_info)))
            if len(batch) >= _BATCH:
                self._insert(table, batch, duplicate)
                batch = []
        if batch:
            self._insert(table, batch, duplicate)
        self._db.execute("COMMIT")

    # -- reading ------------------------------------------------------------------------
    def videos(self) -> Iterator[VideoRecords]:
        """Every video of the GT in video order, its images in frame order, one video at a time."""
        rows = self._db.execute(
            "SELECT i.video_id, i.frame_index, i.id, i.file_name, i.width, i.height, g.file_name, g.segments, "
            "p.file_name, p.segments FROM images i INDEXED BY frames LEFT JOIN gt g ON g.key = i.key "
            "LEFT JOIN pred p ON p.key = i.key ORDER BY i.video_id, i.frame_index")
        current: VideoRecords | None = None
        for video_id, frame_index, id_, file_name, width, height, gt_file, gt_segs, pred_file, pred_segs in rows:
            if current is None or current.video_id != video_id:
                if current is not None:
                    yield current
                current = VideoRecords(video_id, [])
            image = VpsImage(json.loads(id_), file_name, width, height, video_id, frame_index)
            current.frames.append(FrameRecords(image, gt_file, gt_segs or "[]", pred_file, pred_segs or "[]"))
        if current is not None:
            yield current

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "VideoSplit":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def parse_segments(text: str, where: str) -> list[SegmentInfo]:
    """The :class:`SegmentInfo` list of a ``segments_info`` kept as JSON text, checked."""
    return segments_from_records(json.loads(text), where)
