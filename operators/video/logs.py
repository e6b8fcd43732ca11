"""Driving logs as video sources: every camera topic of an MCAP file or a ROS 1 bag is a video.

A log holds several streams; one of them is named by a *stream URI*, the log's URI plus
``#`` plus the topic (``s3://fleet/drive.mcap#/camera/front/image_raw/compressed``), and
:class:`~operators.video.log_source.LogTopicSource` gives it as a
:class:`~operators.video.source.VideoSource` like any mp4 (readers: :func:`~operators.video.log_source.open_log`).
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

from operators.errors import InputError

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

    def check_range(self, topic: str, a: int, b: int, count: int) -> None:
        """Refuse messages ``[a, b)`` of a topic that holds ``count``."""
        if not 0 <= a <= b <= count:
            raise InputError(f"{self.uri} topic {topic}", f"messages [{a}, {b}) outside its {count}")

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


def first_index_at(times: list[int], a: int) -> int:
    """The first index holding the same log time as index ``a`` (``times`` is sorted): a reader
    that seeks by time lands there and must skip ``a - first_index_at(times, a)`` messages."""
    return bisect.bisect_left(times, times[a], 0, a + 1)
