"""Driving logs as video sources: every camera topic of an MCAP file or a ROS 1 bag is a video.

A log holds several streams; one of them is named by a *stream URI*, the log's URI plus
``#`` plus the topic (``s3://fleet/drive.mcap#/camera/front/image_raw/compressed``), and
:func:`open_log_topic` gives it as a :class:`~operators.video.source.VideoSource` like any mp4.
Its video id is ``<log id>:<topic>`` (:func:`log_video_id`).

Frame ``k`` of a stream is the ``k``-th message of the topic in log-time order (ties in file
order). Both formats carry an index of every message's log time and position
(:mod:`.mcap_log`, :mod:`.bag_log`), so reading frames ``[a, b)`` touches only the chunks that
hold them. A frame's timestamp is its header stamp, or the log time when the stamp is zero.
"""
from __future__ import annotations

import abc
import bisect
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from operators.errors import FormatMismatchError, InputError
from operators.video.ros_images import decode_camera_message, header_stamp_ns
from operators.video.source import VideoMeta, VideoSource

LOG_EXTENSIONS = (".mcap", ".bag")
STREAM_SEPARATOR = "#"


def is_log(uri: str) -> bool:
    return str(uri).lower().endswith(LOG_EXTENSIONS)


def stream_uri(log_uri: str, topic: str) -> str:
    """The URI of one camera topic of a log."""
    return f"{log_uri}{STREAM_SEPARATOR}{topic}"


def split_stream_uri(uri: str) -> tuple[str, str | None]:
    """``(log URI, topic)`` of a stream URI; ``(uri, None)`` for anything else."""
    uri = str(uri)
    head, sep, topic = uri.partition(STREAM_SEPARATOR)
    if sep and is_log(head) and topic:
        return head, topic
    return uri, None


def log_video_id(log_id: str, topic: str) -> str:
    """The video id of a camera topic: ``<log id>:<topic>`` (``drive_0001:/camera/front/image_raw``).
    The separator keeps ``a.mcap`` topic ``/b/c`` apart from ``a/b.mcap`` topic ``/c``."""
    return f"{log_id}:{topic}"


@dataclass(frozen=True)
class LogMessage:
    """One message of a topic: its frame index in the topic, log time (ns) and decoded message."""

    index: int
    log_time: int
    message: object


class CameraLog(abc.ABC):
    """A log file opened for its camera topics. Subclasses know one container format."""

    uri: str

    @abc.abstractmethod
    def camera_topics(self) -> dict[str, str]:
        """topic → message type of every camera topic (``sensor_msgs`` Image / CompressedImage)."""

    @abc.abstractmethod
    def log_times(self, topic: str) -> list[int]:
        """The log time (ns) of every message of ``topic``, in frame order (from the index)."""

    @abc.abstractmethod
    def messages(self, topic: str, a: int, b: int) -> Iterator[LogMessage]:
        """Messages ``a .. b-1`` of ``topic``, decoded; reads only the chunks that hold them."""

    def close(self) -> None:  # noqa: B027 — a reader without a handle has nothing to free
        pass

    def where(self, topic: str, index: int, log_time: int | None = None) -> str:
        """How an error names a message: the log, the topic, the message."""
        at = f" (log time {log_time} ns)" if log_time is not None else ""
        return f"{self.uri} topic {topic} message {index}{at}"

    def __enter__(self) -> "CameraLog":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def open_log(uri: str) -> CameraLog:
    """The reader of a log file by its extension (``.mcap`` or ``.bag``)."""
    if str(uri).lower().endswith(".mcap"):
        from operators.video.mcap_log import McapLog

        return McapLog(uri)
    if str(uri).lower().endswith(".bag"):
        from operators.video.bag_log import BagLog

        return BagLog(uri)
    raise FormatMismatchError(uri, f"not a log: expected one of {'/'.join(LOG_EXTENSIONS)}")


def first_index_at(times: list[int], a: int) -> int:
    """The first index holding the same log time as index ``a`` (``times`` is sorted): a reader
    that seeks by time lands there and must skip ``a - first_index_at(times, a)`` messages."""
    return bisect.bisect_left(times, times[a], 0, a + 1)


class LogTopicSource(VideoSource):
    """One camera topic of a log as a :class:`VideoSource`.

    ``meta.frame_count`` is the topic's message count from the index; the size is the first
    frame's (a later frame of another size is a :class:`FormatMismatchError`); ``fps`` is the
    mean rate of the log times. :meth:`read_timed` gives each frame's timestamp: the header
    stamp, or the log time when the stamp is zero.
    """

    def __init__(self, uri: str, *, log: CameraLog | None = None):
        self.uri = str(uri)
        self.log_uri, topic = split_stream_uri(self.uri)
        if topic is None:
            with open_log(self.log_uri) as whole:  # a damaged log fails here with its own error
                topics = sorted(whole.camera_topics())
            raise InputError(self.uri, f"a log holds one video per camera topic: name one as LOG#TOPIC (its camera "
                                       f"topics: {topics or 'none'})")
        self.topic = topic
        self.log = log or open_log(self.log_uri)
        try:
            cameras = self.log.camera_topics()
            if topic not in cameras:
                raise InputError(self.uri, f"no camera topic {topic!r} in the log; its camera topics: "
                                           f"{sorted(cameras) or 'none'}")
            self.message_type = cameras[topic]
            self.times = self.log.log_times(topic)
            if not self.times:
                raise InputError(self.uri, f"topic {topic} has no messages")
            first = next(self.log.messages(topic, 0, 1))
            height, width = self._frame(first).shape[:2]
        except BaseException:
            self.close()
            raise
        span = self.times[-1] - self.times[0]
        fps = (len(self.times) - 1) * 1e9 / span if len(self.times) > 1 and span > 0 else None
        self.meta = VideoMeta(self.uri, len(self.times), fps, width, height)

    def _frame(self, item: LogMessage) -> np.ndarray:
        return decode_camera_message(self.message_type, item.message, self.log.where(self.topic, item.index,
                                                                                     item.log_time))

    def _decode_timed(self, a: int, b: int) -> Iterator[tuple[np.ndarray, int | None]]:
        for item in self.log.messages(self.topic, a, b):
            rgb = self._frame(item)
            if rgb.shape[:2] != self.meta.size:
                raise FormatMismatchError(self.log.where(self.topic, item.index, item.log_time),
                                          f"frame is {rgb.shape[1]}x{rgb.shape[0]} (WxH), the topic's first frame "
                                          f"is {self.meta.width}x{self.meta.height}")
            yield rgb, header_stamp_ns(item.message) or item.log_time

    def _decode(self, a: int, b: int) -> Iterator[np.ndarray]:
        for rgb, _ in self._decode_timed(a, b):
            yield rgb

    def close(self) -> None:
        if getattr(self, "log", None) is not None:
            self.log.close()
            self.log = None
