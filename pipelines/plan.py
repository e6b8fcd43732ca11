"""Corpus planning: which videos a labelling run covers, and the frame chunks it cuts them into.

A corpus is named by one URI (any fsspec filesystem):

* a directory or bucket prefix: every container (mp4/avi/mkv/mov), every directory of
  frames and every camera topic of every driving log (.mcap, .bag) under it
  (:func:`operators.video.list_videos`), or
* a manifest, Parquet or CSV, with columns ``video_id``, ``uri`` and optionally ``gt`` and
  ``topic`` (a relative ``uri`` is taken relative to the manifest's directory). A log row
  with a ``topic`` (or a ``LOG#TOPIC`` uri) is that camera's video; a log row without one
  stands for every camera topic of the log, each ``<video_id>:<topic>``.

Each video gets a :class:`Fingerprint` built from what the filesystem already knows
(size, modification time, ETag; for an image directory, the same of every frame file), so
a nightly run finds new and changed videos without decoding anything. Frame counts need
the decoder, so cutting a video into :class:`VideoChunk`\\ s (:func:`plan_chunks`) is done
per video, in parallel, by the pipeline.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import asdict, dataclass

import pyarrow.parquet as pq

from operators import fs
from operators.errors import FormatMismatchError, InputError
from operators.video import CONTAINER_EXTENSIONS, IMAGE_EXTENSIONS, LOG_EXTENSIONS, is_log, list_videos, open_video, \
    split_stream_uri, stream_uri
from operators.video.catalog import log_refs

MANIFEST_EXTENSIONS = (".parquet", ".csv")


@dataclass(frozen=True)
class Fingerprint:
    """What identifies one version of a video's bytes, from filesystem metadata only.

    ``digest`` is the SHA-256 of the canonical JSON of the other fields; two runs compare
    digests. ``mtime`` is a string because filesystems report it in different types.
    """

    size: int
    mtime: str
    etag: str
    files: int
    digest: str


@dataclass(frozen=True)
class VideoEntry:
    """One video of the corpus. ``gt`` is an optional per-video GT location from a manifest."""

    video_id: str
    uri: str
    fingerprint: Fingerprint
    gt: str | None = None


@dataclass(frozen=True)
class VideoChunk:
    """Frames ``frame_start ≤ i < frame_end`` of one video, its ``chunk_index``-th chunk."""

    video_id: str
    uri: str
    frame_start: int
    frame_end: int
    chunk_index: int

    def to_row(self) -> dict:
        return asdict(self)


def _info_fields(info: dict) -> tuple[int, str, str]:
    """(size, mtime, etag) from an fsspec ``info`` dict: keys differ between filesystems
    (local: ``mtime``; s3: ``LastModified`` and ``ETag``; gcs: ``updated`` and ``md5Hash``)."""
    size = int(info.get("size") or 0)
    mtime = next((str(info[k]) for k in ("mtime", "LastModified", "last_modified", "updated", "created")
                  if info.get(k) is not None), "")
    etag = next((str(info[k]).strip('"') for k in ("ETag", "etag", "md5Hash", "crc32c") if info.get(k)), "")
    return size, mtime, etag


def fingerprint(uri: str) -> Fingerprint:
    """The :class:`Fingerprint` of a container file, a log (every topic of a log shares its
    fingerprint) or an image-sequence directory."""
    uri = split_stream_uri(uri)[0]
    filesystem, path = fs.filesystem(uri)
    try:
        info = filesystem.info(path)
    except FileNotFoundError:
        raise InputError(uri, "video not found") from None
    if info.get("type") == "directory":
        parts = []
        for name, entry in sorted(filesystem.find(path, detail=True).items()):
            if name.lower().endswith(IMAGE_EXTENSIONS) and "/." not in name[len(path):]:
                parts.append((name[len(path):], *_info_fields(entry)))
        size = sum(p[1] for p in parts)
        mtime = max((p[2] for p in parts), default="")
        etag = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
        files = len(parts)
    else:
        size, mtime, etag = _info_fields(info)
        files = 1
    digest = hashlib.sha256(json.dumps([size, mtime, etag, files]).encode()).hexdigest()
    return Fingerprint(size, mtime, etag, files, digest)


def is_manifest(uri: str) -> bool:
    return str(uri).lower().endswith(MANIFEST_EXTENSIONS)


def _manifest_records(uri: str) -> list[dict]:
    try:
        data = fs.read_bytes(uri)
    except FileNotFoundError:
        raise InputError(uri, "manifest not found") from None
    try:
        if uri.lower().endswith(".parquet"):
            return pq.read_table(io.BytesIO(data)).to_pylist()
        return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    except Exception as exc:  # pyarrow and csv raise many types for a damaged file
        raise FormatMismatchError(uri, f"cannot read the manifest: {exc}") from None


def _resolve(base: str, uri: str) -> str:
    if "://" in uri or uri.startswith("/"):
        return uri
    return fs.join(base, uri)


def read_manifest(uri: str) -> list[VideoEntry]:
    """Videos listed in a Parquet/CSV manifest (columns ``video_id``, ``uri``, optional ``gt``)."""
    records = _manifest_records(uri)
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    entries, seen = [], set()
    for line, record in enumerate(records, start=1):
        if "video_id" not in record or not str(record.get("uri") or "").strip():
            raise FormatMismatchError(uri, f"row {line}: needs the columns 'video_id' and 'uri' (non-empty), "
                                           f"got {str(record)[:200]}")
        # an id that cannot name a path (empty, too long) becomes that video's failure row, not a crash
        video_id = "" if record["video_id"] is None else str(record["video_id"]).strip()
        video_uri = str(record["uri"]).strip()
        if video_id in seen:
            raise FormatMismatchError(uri, f"row {line}: video_id {video_id!r} is listed twice")
        seen.add(video_id)
        gt = str(record.get("gt") or "").strip() or None
        gt = _resolve(base, gt) if gt else None
        video_uri = _resolve(base, video_uri)
        topic = str(record.get("topic") or "").strip()
        if topic:
            if not is_log(video_uri):
                raise FormatMismatchError(uri, f"row {line}: a topic is given but {video_uri} is not a log (.mcap/.bag)")
            video_uri = stream_uri(video_uri, topic)
        if is_log(video_uri):  # a whole log: each camera topic is a video
            refs = log_refs(video_uri, video_id)
            entries.extend((r.video_id, r.uri, gt) for r in refs)
            continue
        entries.append((video_id, video_uri, gt))
    # a manifest may name a video that is not there: it still gets planned (and fails with a
    # clear error row in decode), so its fingerprint marks it missing
    prints = fingerprints([video_uri for _, video_uri, _ in entries], missing_ok=True)
    return [VideoEntry(video_id, video_uri, fp, gt) for (video_id, video_uri, gt), fp in zip(entries, prints)]


MISSING = Fingerprint(0, "", "missing", 0, "missing")


def fingerprints(uris: list[str], missing_ok: bool = False) -> list[Fingerprint]:
    """The :func:`fingerprint` of each URI, in order: each file once (the topics of a log share
    theirs), in parallel (:func:`operators.fs.map_io`: on an object store each is a request).
    ``missing_ok``: a file that is not there gets :data:`MISSING` instead of an InputError."""
    def one(uri: str) -> Fingerprint:
        try:
            return fingerprint(uri)
        except InputError:
            if missing_ok:
                return MISSING
            raise

    files = list(dict.fromkeys(split_stream_uri(uri)[0] for uri in uris))
    by_file = dict(zip(files, fs.map_io(one, files)))
    return [by_file[split_stream_uri(uri)[0]] for uri in uris]


def discover(input_uri: str) -> list[VideoEntry]:
    """The videos of a corpus (manifest or prefix), sorted by ``video_id``."""
    input_uri = str(input_uri).rstrip("/")
    if is_manifest(input_uri):
        entries = read_manifest(input_uri)
    else:
        refs = list_videos(input_uri)
        entries = [VideoEntry(ref.video_id, ref.uri, fp)
                   for ref, fp in zip(refs, fingerprints([ref.uri for ref in refs]))]
    if not entries:
        raise InputError(input_uri, _nothing_to_label(input_uri))
    ids = [e.video_id for e in entries]
    if len(set(ids)) != len(ids):
        dup = sorted({v for v in ids if ids.count(v) > 1})
        raise FormatMismatchError(input_uri, f"two videos share the id(s) {dup} (e.g. a.mp4 and a.mkv)")
    return sorted(entries, key=lambda e: e.video_id)


def _nothing_to_label(input_uri: str) -> str:
    """What an input without any video holds, for the error that says so."""
    if is_manifest(input_uri):
        return "the manifest lists no video"
    filesystem, path = fs.fresh(input_uri)
    found = sorted(f[len(path.rstrip("/")):].lstrip("/") for f in filesystem.find(path))
    kinds = sorted({("." + f.rsplit(".", 1)[-1].lower()) if "." in f.rsplit("/", 1)[-1] else "(no extension)"
                    for f in found})
    what = (f"{len(found)} file(s) tubeflow does not read ({', '.join(kinds[:6])}; e.g. {found[0]!r})"
            if found else "nothing (an empty directory)")
    return (f"holds no video: found {what}; tubeflow reads {'/'.join(CONTAINER_EXTENSIONS)} files, "
            f"{'/'.join(LOG_EXTENSIONS)} logs, directories of {'/'.join(IMAGE_EXTENSIONS)} frames, or a .parquet/.csv "
            "manifest")


def chunk_ranges(frame_count: int, chunk_frames: int) -> list[tuple[int, int]]:
    """``[(a, b), …]`` covering ``0..frame_count`` in chunks of ``chunk_frames`` (the last may be shorter)."""
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be ≥ 1")
    return [(a, min(a + chunk_frames, frame_count)) for a in range(0, frame_count, chunk_frames)]


def plan_chunks(video_id: str, uri: str, chunk_frames: int) -> list[VideoChunk]:
    """Open the video once for its (verified) frame count and cut it into chunks.

    Raises :class:`InputError` (a :class:`~operators.errors.CorruptFileError` for an
    undecodable file) naming the video; an empty video holds no frame and fails the same way.
    """
    with open_video(uri) as source:
        count = source.meta.frame_count
    if count <= 0:
        raise InputError(uri, f"video {video_id} has no frames")
    ranges = chunk_ranges(count, chunk_frames)
    return [VideoChunk(video_id, uri, a, b, i) for i, (a, b) in enumerate(ranges)]
