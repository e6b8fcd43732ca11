"""Labels as an MCAP log that plays beside the raw log in Foxglove.

For each camera topic ``T`` a review log holds two topics, both JSON-encoded with Foxglove's
well-known schemas (Foxglove renders them by schema name):

* ``T/panoptic`` — ``foxglove.CompressedImage``: the panoptic result as a PNG, every track in
  its own colour (:func:`operators.review.overlay.track_colour`, the same in every frame);
* ``T/panoptic/annotations`` — ``foxglove.ImageAnnotations``: per thing segment a box
  (``points``, a line loop in the track's colour) and a text ``<track id> <class>``.

Every message is *stamped like its camera frame*: the message's ``timestamp`` field is the
frame's header stamp (the ``timestamp_ns`` of the segments table) and its MCAP log time is the
raw message's log time, so the labels line up with the camera in Foxglove whether it plays by
log time or by header stamp. Open the raw log and the review log together.
"""
from __future__ import annotations

import base64
import heapq
import json
from typing import Iterable, Sequence

import cv2
import numpy as np

from operators import fs
from operators.formats.categories import CITYSCAPES_CATEGORIES, Category
from operators.review.overlay import LabelledSegment, colourise, track_colour

IMAGE_SCHEMA = "foxglove.CompressedImage"
ANNOTATIONS_SCHEMA = "foxglove.ImageAnnotations"
_TIME = {"type": "object", "properties": {"sec": {"type": "integer", "minimum": 0},
                                          "nsec": {"type": "integer", "minimum": 0, "maximum": 999999999}}}
_POINT = {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}}
_COLOR = {"type": "object", "properties": {k: {"type": "number", "minimum": 0, "maximum": 1} for k in "rgba"}}
SCHEMAS = {
    IMAGE_SCHEMA: {"title": IMAGE_SCHEMA, "description": "A compressed image", "type": "object", "properties": {
        "timestamp": _TIME, "frame_id": {"type": "string"},
        "data": {"type": "string", "contentEncoding": "base64"}, "format": {"type": "string"}}},
    ANNOTATIONS_SCHEMA: {"title": ANNOTATIONS_SCHEMA, "description": "Array of annotations for a 2D image",
                         "type": "object", "properties": {
        "circles": {"type": "array", "items": {"type": "object"}},
        "points": {"type": "array", "items": {"type": "object", "properties": {
            "timestamp": _TIME, "type": {"type": "integer", "description": "0 UNKNOWN, 1 POINTS, 2 LINE_LOOP, "
                                                                           "3 LINE_STRIP, 4 LINE_LIST"},
            "points": {"type": "array", "items": _POINT}, "outline_color": _COLOR,
            "outline_colors": {"type": "array", "items": _COLOR}, "fill_color": _COLOR,
            "thickness": {"type": "number"}}}},
        "texts": {"type": "array", "items": {"type": "object", "properties": {
            "timestamp": _TIME, "position": _POINT, "text": {"type": "string"}, "font_size": {"type": "number"},
            "text_color": _COLOR, "background_color": _COLOR}}}}},
}
_LINE_LOOP = 2


def image_topic(camera_topic: str) -> str:
    return f"{camera_topic.rstrip('/')}/panoptic"


def annotations_topic(camera_topic: str) -> str:
    return f"{image_topic(camera_topic)}/annotations"


def _time(ns: int) -> dict:
    return {"sec": int(ns // 1_000_000_000), "nsec": int(ns % 1_000_000_000)}


def _colour(rgb, alpha: float = 1.0) -> dict:
    return {"r": rgb[0] / 255, "g": rgb[1] / 255, "b": rgb[2] / 255, "a": alpha}


def panoptic_image_message(ids: np.ndarray, stamp_ns: int, frame_id: str,
                           categories: Sequence[Category] = CITYSCAPES_CATEGORIES) -> dict:
    """``foxglove.CompressedImage`` of ``ids (H, W) int`` coloured by track (PNG, lossless)."""
    ok, png = cv2.imencode(".png", np.ascontiguousarray(colourise(ids, categories)[..., ::-1]))
    if not ok:
        raise RuntimeError("OpenCV failed to encode a PNG")
    return {"timestamp": _time(stamp_ns), "frame_id": frame_id, "format": "png",
            "data": base64.b64encode(png.tobytes()).decode("ascii")}


def annotations_message(segments: Sequence[LabelledSegment], stamp_ns: int,
                        categories: Sequence[Category] = CITYSCAPES_CATEGORIES) -> dict:
    """``foxglove.ImageAnnotations``: a box and ``<track id> <class>`` per thing segment."""
    names = {c.id: c.name for c in categories}
    points, texts = [], []
    for seg in segments:
        if not seg.isthing:
            continue
        x, y, w, h = (float(v) for v in seg.bbox)
        colour = _colour(track_colour(seg.track_id))
        name = names.get(seg.category_id, str(seg.category_id))
        points.append({"timestamp": _time(stamp_ns), "type": _LINE_LOOP, "thickness": 2.0,
                       "points": [{"x": x, "y": y}, {"x": x + w, "y": y}, {"x": x + w, "y": y + h},
                                  {"x": x, "y": y + h}],
                       "outline_color": colour, "outline_colors": [], "fill_color": _colour((0, 0, 0), 0.0)})
        texts.append({"timestamp": _time(stamp_ns), "position": {"x": x, "y": max(y - 2.0, 0.0)},
                      "text": f"{name} (crowd)" if seg.iscrowd else f"{seg.track_id} {name}", "font_size": 14.0,
                      "text_color": _colour((255, 255, 255)), "background_color": colour})
    return {"circles": [], "points": points, "texts": texts}


class ReviewLogWriter(fs.StagedFile):
    """Write a review MCAP to any fsspec URI, atomically (see the module doc)."""

    def __init__(self, uri: str):
        from mcap.writer import CompressionType, Writer

        super().__init__(uri)
        self._file = open(self.local_path, "wb")
        self._writer = Writer(self._file, compression=CompressionType.ZSTD)
        self._writer.start(profile="", library="tubeflow")
        self._schemas = {name: self._writer.register_schema(name, "jsonschema", json.dumps(schema).encode())
                         for name, schema in SCHEMAS.items()}
        self._channels: dict[str, int] = {}
        self.frames = 0

    def _channel(self, topic: str, schema: str) -> int:
        if topic not in self._channels:
            self._channels[topic] = self._writer.register_channel(topic, "json", self._schemas[schema])
        return self._channels[topic]

    def write_raw(self, topic: str, schema: str, data: bytes, log_time_ns: int) -> None:
        """One already-encoded JSON message of ``schema`` (a name of :data:`SCHEMAS`)."""
        self._writer.add_message(self._channel(topic, schema), log_time=int(log_time_ns), data=data,
                                 publish_time=int(log_time_ns))

    def write_json(self, topic: str, schema: str, message: dict, log_time_ns: int) -> None:
        self.write_raw(topic, schema, json.dumps(message, separators=(",", ":")).encode(), log_time_ns)

    def add_frame(self, camera_topic: str, ids: np.ndarray, segments: Sequence[LabelledSegment], stamp_ns: int,
                  log_time_ns: int, frame_id: str = "camera",
                  categories: Sequence[Category] = CITYSCAPES_CATEGORIES) -> None:
        """The panoptic image and the annotations of one camera frame (``categories``: the
        model's classes, for stuff colours and class names)."""
        self.write_json(image_topic(camera_topic), IMAGE_SCHEMA,
                        panoptic_image_message(ids, stamp_ns, frame_id, categories), log_time_ns)
        self.write_json(annotations_topic(camera_topic), ANNOTATIONS_SCHEMA,
                        annotations_message(segments, stamp_ns, categories), log_time_ns)
        self.frames += 1

    def _finish(self) -> None:
        self._writer.finish()
        self._file.close()

    def _release(self) -> None:
        self._file.close()


def merge_review_logs(parts: Iterable[str], uri: str) -> int:
    """Merge review MCAPs (one per camera topic) into one log at ``uri``, messages in log-time
    order, streaming (one message per part in memory). Returns the number of messages."""
    from mcap.reader import make_reader

    files = []
    try:
        for part in parts:
            filesystem, path = fs.filesystem(part)
            files.append(filesystem.open(path, "rb"))
        # (log time, part, position) orders the merge; the payload is never compared
        iterators = [((m.log_time, n, k, channel.topic, schema.name, m.data)
                      for k, (schema, channel, m) in enumerate(make_reader(f).iter_messages(log_time_order=True)))
                     for n, f in enumerate(files)]
        count = 0
        with ReviewLogWriter(uri) as writer:
            for log_time, _, _, topic, schema, data in heapq.merge(*iterators):
                writer.write_raw(topic, schema, data, log_time)
                count += 1
        return count
    finally:
        for f in files:
            f.close()
