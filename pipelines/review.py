"""Review outputs of a labelling run (``--review mcap``, ``--overlay``):

* per video (staged and committed with it): ``review/parts/<video>.mcap`` — the labels of one
  camera as a review log (:mod:`operators.review.mcap`, written by
  :func:`pipelines.label.finalize.finalize_video`), and ``thumbnails/<video>.jpg`` — its middle
  frame's overlay (written by the sink that has the frame's pixels,
  :func:`pipelines.label.sink.render_frames`: no video is decoded for it);
* per run, from the committed videos only (like ``pred.json``): ``review/<log>.mcap`` — the
  parts of every camera of one log merged into one review log, and ``review/index.html`` — the
  videos worst first with their thumbnails (by VPQ when there is GT; without GT by how unstable
  the tracks are: new track ids per 100 frames).
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from operators import fs
from operators.formats import segments_table
from operators.formats.categories import CITYSCAPES_CATEGORIES, Category
from operators.ids import video_key
from operators.review.mcap import ReviewLogWriter, merge_review_logs
from operators.review.overlay import LabelledSegment, encode_jpeg
from operators.video import LogTopicSource, split_stream_uri
from pipelines.commit import CommitMarker, OutputLayout, committed_markers

REVIEW_FORMATS = ("mcap",)


def review_part_rel(video_id: str) -> str:
    return f"review/parts/{video_key(video_id)}.mcap"


def thumbnail_rel(video_id: str) -> str:
    return f"thumbnails/{video_key(video_id)}.jpg"


def labelled_segments(rows) -> list[LabelledSegment]:
    return [LabelledSegment(r.track_id, r.category_id, tuple(r.bbox), r.isthing, r.iscrowd) for r in rows]


def frame_ids(rows, size) -> np.ndarray:
    return segments_table.rows_to_frame(rows).ids if rows else np.zeros(size, np.int32)


def write_review_part(uri: str, video_uri: str, frame_count: int, by_frame: dict, size, times: dict,
                      categories: Sequence[Category] = CITYSCAPES_CATEGORIES) -> int:
    """The review log of one video: every frame's panoptic image and annotations, stamped with the
    frame's time and, for a log, the raw message's log time (the frame index at 10 fps for a
    source without times). Returns the frames written."""
    log_uri, topic = split_stream_uri(video_uri)
    log_times = None
    if topic is not None:
        with LogTopicSource(video_uri) as source:
            log_times = source.times
    camera = topic or "/" + log_uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    with ReviewLogWriter(uri) as writer:
        for index in range(frame_count):
            rows = by_frame.get(index, [])
            stamp = times.get(index)
            stamp = int(index * 100_000_000) if stamp is None else int(stamp)
            log_time = log_times[index] if log_times is not None else stamp
            writer.add_frame(camera, frame_ids(rows, size), labelled_segments(rows), stamp, log_time,
                             frame_id=camera.strip("/").replace("/", "_") or "camera", categories=categories)
        return writer.frames


def write_thumbnail(uri: str, overlay: np.ndarray, width: int = 320) -> None:
    """A video's thumbnail: its middle frame's overlay (``(H, W, 3) uint8``, as
    :func:`operators.review.overlay.render_frame_overlay` renders it where the frame was decoded),
    ``width`` pixels wide, as a JPEG."""
    height = max(1, round(overlay.shape[0] * width / overlay.shape[1]))
    small = cv2.resize(overlay, (width, height), interpolation=cv2.INTER_AREA)
    fs.write_bytes(uri, encode_jpeg(small, 85))


# ------------------------------------------------------------------------------ per run
def log_name(video_id: str, log_uri: str, topic: str) -> str:
    """The name of a log's review file: the log id of ``<log id>:<topic>`` video ids, else the
    log file's name without its extension."""
    suffix = f":{topic}"
    stem = video_id[:-len(suffix)] if video_id.endswith(suffix) else log_uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return video_key(stem)


def write_review_logs(layout: OutputLayout, uris: dict[str, str],
                      markers: dict[str, CommitMarker] | None = None) -> list[str]:
    """``review/<log>.mcap`` for every log with a committed review part; ``uris`` maps video ids to
    their source URIs (``LOG#TOPIC``). Returns the URIs written."""
    markers = committed_markers(layout) if markers is None else markers
    by_log: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for video_id, marker in markers.items():
        log_uri, topic = split_stream_uri(uris.get(video_id, ""))
        if topic is None or review_part_rel(video_id) not in marker.files:
            continue
        by_log.setdefault(log_uri, []).append(layout.uri(review_part_rel(video_id)))
        names.setdefault(log_uri, log_name(video_id, log_uri, topic))
    written = []
    for log_uri, parts in sorted(by_log.items()):
        out = layout.uri(f"review/{names[log_uri]}.mcap")
        merge_review_logs(sorted(parts), out)
        written.append(out)
    return written


@dataclass
class ReviewRow:
    """One line of the review report."""

    video_id: str
    frames: int
    tracks: int
    vpq: float | None
    thumbnail: str | None

    @property
    def new_ids_per_100_frames(self) -> float:
        """Thing track ids started per 100 frames: each id is new once, so a stable tracker on a
        scene with few objects scores low and one that fragments tracks scores high."""
        return 100.0 * self.tracks / self.frames if self.frames else 0.0


def rank_worst_first(rows: list[ReviewRow]) -> list[ReviewRow]:
    """By VPQ ascending when any video has one (videos without come last), else by new ids per
    100 frames descending."""
    if any(r.vpq is not None and not math.isnan(r.vpq) for r in rows):
        return sorted(rows, key=lambda r: (r.vpq is None or math.isnan(r.vpq), r.vpq or 0.0, r.video_id))
    return sorted(rows, key=lambda r: (-r.new_ids_per_100_frames, r.video_id))


def write_review_report(layout: OutputLayout, vpq_of: dict[str, float], video_ids: list[str] | None = None,
                        markers: dict[str, CommitMarker] | None = None) -> str:
    """``review/index.html`` over the committed videos (all, or ``video_ids``), worst first."""
    markers = committed_markers(layout) if markers is None else markers
    wanted = None if video_ids is None else set(video_ids)
    rows = []
    for video_id, marker in markers.items():
        if wanted is not None and video_id not in wanted:
            continue
        thumb = thumbnail_rel(video_id) if thumbnail_rel(video_id) in marker.files else None
        rows.append(ReviewRow(video_id, int(marker.counts.get("frames", 0)), int(marker.counts.get("tracks", 0)),
                              vpq_of.get(video_id), thumb))
    rows = rank_worst_first(rows)
    by_vpq = any(r.vpq is not None for r in rows)
    ranked_by = "VPQ (ascending)" if by_vpq else "new track ids per 100 frames (descending): how unstable the tracks are"
    lines = ["<!doctype html><meta charset='utf-8'><title>tubeflow review</title>",
             "<style>body{font-family:sans-serif}td{padding:4px 10px;vertical-align:middle}</style>",
             f"<h1>Videos, worst first</h1><p>Ranked by {ranked_by}.</p>",
             "<table><tr><th>#</th><th>video</th><th>frames</th><th>tracks</th><th>new ids / 100 frames</th>"
             "<th>VPQ</th><th>frame</th></tr>"]
    for n, r in enumerate(rows, 1):
        vpq = "" if r.vpq is None or math.isnan(r.vpq) else f"{100 * r.vpq:.1f}"
        thumb = f"<img src='../{html.escape(r.thumbnail)}' width=320>" if r.thumbnail else ""
        lines.append(f"<tr><td>{n}</td><td>{html.escape(r.video_id)}</td><td>{r.frames}</td><td>{r.tracks}</td>"
                     f"<td>{r.new_ids_per_100_frames:.1f}</td><td>{vpq}</td><td>{thumb}</td></tr>")
    lines.append("</table>")
    uri = layout.uri("review/index.html")
    fs.write_bytes(uri, "\n".join(lines).encode())
    return uri


def video_sources(entries) -> dict[str, dict]:
    """video_id → where its frames come from (``source_uri``, ``topic``; topic None for files and
    directories), for the run manifest."""
    out = {}
    for entry in entries:
        source_uri, topic = split_stream_uri(entry.uri)
        out[entry.video_id] = {"source_uri": source_uri, "topic": topic}
    return out


def write_review_outputs(layout: OutputLayout, entries, config, results,
                         markers: dict[str, CommitMarker] | None = None) -> None:
    """After a run: the per-log review MCAPs (``--review mcap``) and the report, over the
    committed videos of this corpus (``markers``: the committed markers, read fresh by the caller)."""
    markers = committed_markers(layout) if markers is None else markers
    if config.review == "mcap":
        write_review_logs(layout, {e.video_id: e.uri for e in entries}, markers)
    vpq_of = {r.video_id: r.metrics["vpq"] for r in results if "vpq" in r.metrics}
    write_review_report(layout, vpq_of, [e.video_id for e in entries], markers)
