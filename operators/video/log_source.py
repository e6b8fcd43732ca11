"""A camera topic of a driving log as a :class:`~operators.video.source.VideoSource`, and the
reader of a log by its extension (:func:`open_log`): MCAP (:mod:`operators.video.mcap_log`) or
ROS 1 bag (:mod:`operators.video.bag_log`), both on the common ground of
:mod:`operators.video.logs`."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from operators.errors import FormatMismatchError, InputError
from operators.video.bag_log import BagLog
from operators.video.logs import LOG_EXTENSIONS, CameraLog, LogMessage, split_stream_uri
from operators.video.mcap_log import McapLog
from operators.video.ros_images import decode_camera_message, header_stamp_ns
from operators.video.source import VideoMeta, VideoSource


def open_log(uri: str) -> CameraLog:
    """The reader of a log file by its extension (``.mcap`` or ``.bag``)."""
    if str(uri).lower().endswith(".mcap"):
        return McapLog(uri)
    if str(uri).lower().endswith(".bag"):
        return BagLog(uri)
    raise FormatMismatchError(uri, f"not a log: expected one of {'/'.join(LOG_EXTENSIONS)}")



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
