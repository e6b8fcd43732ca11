"""ROS 1 bags (format 2.0) read through their index, with ``rosbags``.

A bag ends with an index: per chunk, per connection, the ``(time, offset)`` of every message.
``rosbags``' reader loads it at open; frame ``k`` of a topic is its ``k``-th index entry in time
order, and reading ``[a, b)`` asks the reader for that time window, which decompresses only the
chunks the window touches (messages sharing the first time are skipped by count). Messages are
deserialised with the bag's own message definitions, so custom builds of ``sensor_msgs`` work.

``rosbags`` opens bags by local path, so a remote bag is first copied into the local cache
(:func:`operators.fs.local_copy`), like a remote mp4.
"""
from __future__ import annotations

from typing import Iterator

from operators import fs
from operators.errors import CorruptFileError
from operators.video.logs import CameraLog, LogMessage, first_index_at
from operators.video.ros_images import is_camera_type


class BagLog(CameraLog):
    """A ROS 1 bag: its camera topics, their frame tables, and decoded messages by index."""

    def __init__(self, uri: str):
        from rosbags.rosbag1 import Reader, ReaderError
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        self.uri = str(uri)
        try:
            if not fs.exists(self.uri):
                raise FileNotFoundError(self.uri)
            path = fs.local_copy(self.uri)
        except FileNotFoundError:
            raise CorruptFileError(self.uri, "file not found") from None
        self._reader = Reader(path)
        try:
            self._reader.open()
        except (ReaderError, OSError, ValueError, KeyError, IndexError) as exc:
            self._reader = None
            raise CorruptFileError(self.uri, f"not a readable ROS 1 bag ({exc})") from None
        self._typestore = get_typestore(Stores.ROS1_NOETIC)
        self._cameras = [c for c in self._reader.connections if is_camera_type(c.msgtype)]
        for connection in self._cameras:
            try:
                self._typestore.register(get_types_from_msg(connection.msgdef.data, connection.msgtype))
            except Exception:  # noqa: BLE001 — a definition the store already holds (or a clash): keep the store's
                pass

    def camera_topics(self) -> dict[str, str]:
        return {c.topic: c.msgtype for c in self._cameras}

    def _connections(self, topic: str) -> list:
        return [c for c in self._cameras if c.topic == topic]

    def log_times(self, topic: str) -> list[int]:
        entries = sorted(e for c in self._connections(topic) for e in self._reader.indexes[c.id])
        return [e.time for e in entries]

    def messages(self, topic: str, a: int, b: int) -> Iterator[LogMessage]:
        times = self.log_times(topic)
        self.check_range(topic, a, b, len(times))
        if a == b:
            return
        k = first_index_at(times, a)
        stream = self._reader.messages(connections=self._connections(topic), start=times[a], stop=times[b - 1] + 1)
        while k < b:
            try:
                connection, log_time, raw = next(stream)
            except StopIteration:
                raise CorruptFileError(self.where(topic, k), "the index lists it but the bag does not hold it") \
                    from None
            except Exception as exc:  # noqa: BLE001 — bz2/lz4 and record parsing errors: a damaged chunk
                raise CorruptFileError(self.where(topic, k, times[k]), f"its chunk does not read "
                                                                       f"({type(exc).__name__}: {exc})") from None
            if k >= a:
                where = self.where(topic, k, log_time)
                try:
                    message = self._typestore.deserialize_ros1(raw, connection.msgtype)
                except Exception as exc:  # noqa: BLE001 — a truncated buffer raises struct/index errors
                    raise CorruptFileError(where, f"the message does not decode as {connection.msgtype} "
                                                  f"({type(exc).__name__}: {exc})") from None
                yield LogMessage(k, log_time, message)
            k += 1

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None:
            self._reader.close()
            self._reader = None
