"""MCAP logs (ROS 2, CDR-encoded ``sensor_msgs``) read through their index.

An indexed MCAP ends with a summary: a *chunk index* per chunk (where it is, its time range,
and where the chunk's *message index* records are) and the channels and schemas. A message
index lists ``(log time, offset in the decompressed chunk)`` of every message of one channel
in one chunk, and sits uncompressed after its chunk. So the frame table of a topic — frame
``k`` is in chunk ``c`` at offset ``o`` — is built from a few small reads per chunk, without
decompressing anything, and reading frames ``[a, b)`` decompresses only the chunks that hold
them (each once per read, its CRC checked), then decodes the messages at their offsets. A
process keeps the frame tables it built (by log, topic and summary), so the label pipeline's
decode workers, which open a log once per chunk, read its message indexes once.

A file written without a summary or without message indexes is read by scanning: once to
count, and again for every read. That is correct but slow, and :attr:`McapLog.indexed` says
so. A recording cut off before its footer does not open (``mcap recover`` rebuilds one).

The file is opened through fsspec, so ``s3://`` logs are read with range requests: only the
summary, the message indexes and the chunks needed travel.
"""
from __future__ import annotations

import io
import struct
from collections import OrderedDict
from typing import Iterator

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError
from operators.video.logs import CameraLog, LogMessage
from operators.video.ros_images import is_camera_type

_MESSAGE_OPCODE, _MESSAGE_INDEX_OPCODE = 0x05, 0x07
_MESSAGE_HEAD = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time

# Frame tables built in this process, by log and topic and the summary they were built from: a
# decode worker of the label pipeline opens the same log once per chunk, and a long remote log's
# message indexes are thousands of small range reads. A changed file has another summary.
_TABLES: OrderedDict = OrderedDict()
_TABLES_KEPT = 64


class McapLog(CameraLog):
    """An MCAP file: its camera topics, their frame tables, and decoded messages by index."""

    def __init__(self, uri: str):
        from mcap.exceptions import McapError
        from mcap.reader import SeekingReader

        self.uri = str(uri)
        filesystem, path = fs.filesystem(self.uri)
        try:
            self._file = filesystem.open(path, "rb")
        except FileNotFoundError:
            raise CorruptFileError(self.uri, "file not found") from None
        try:
            self._reader = SeekingReader(self._file, validate_crcs=True)
            self._summary = self._reader.get_summary()
        except (McapError, struct.error, ValueError, EOFError, OSError) as exc:
            self.close()
            raise CorruptFileError(self.uri, f"not a readable MCAP file ({type(exc).__name__}: {exc}); a "
                                             "recording cut off before its footer can be rebuilt with `mcap recover`") from None
        self.indexed = bool(self._summary is not None and self._summary.chunk_indexes)
        self._tables: dict[str, list[tuple[int, int, int]]] = {}  # topic → (log time, chunk offset, offset)
        self._chunk: tuple[int, bytes] | None = None  # the last decompressed chunk (its offset, its records)
        self._decoders: dict[int, object] = {}
        if self._summary is not None:
            self._channels, self._schemas = self._summary.channels, self._summary.schemas
        else:
            self._channels, self._schemas = self._scan_channels()

    # -- what the log holds -----------------------------------------------------------------

    def _scan_channels(self):
        from mcap.records import Channel, Schema
        from mcap.stream_reader import StreamReader

        channels, schemas = {}, {}
        self._file.seek(0)
        try:
            for record in StreamReader(self._file).records:
                if isinstance(record, Channel):
                    channels[record.id] = record
                elif isinstance(record, Schema):
                    schemas[record.id] = record
        except Exception as exc:  # noqa: BLE001 — any damage of an unindexed file is the same error
            raise CorruptFileError(self.uri, f"unindexed MCAP that cannot be scanned ({exc})") from None
        return channels, schemas

    def _schema_name(self, channel) -> str:
        schema = self._schemas.get(channel.schema_id)
        return schema.name if schema is not None else ""

    def camera_topics(self) -> dict[str, str]:
        return {c.topic: self._schema_name(c) for c in self._channels.values() if is_camera_type(self._schema_name(c))}

    def _channel_ids(self, topic: str) -> set[int]:
        return {c.id for c in self._channels.values() if c.topic == topic}

    # -- the frame table ---------------------------------------------------------------------

    def _cache_key(self, topic: str) -> tuple | None:
        if not self.indexed:
            return None
        chunks = self._summary.chunk_indexes
        stats = self._summary.statistics
        return (self.uri, topic, len(chunks), chunks[-1].chunk_start_offset, chunks[-1].chunk_length,
                stats.message_count if stats else -1)

    def _table(self, topic: str) -> list[tuple[int, int, int]]:
        if topic in self._tables:
            return self._tables[topic]
        key = self._cache_key(topic)
        if key in _TABLES:
            _TABLES.move_to_end(key)
            self._tables[topic] = _TABLES[key]
            return _TABLES[key]
        ids = self._channel_ids(topic)
        entries: list[tuple[int, int, int]] = []
        if self.indexed:
            from mcap.data_stream import ReadDataStream
            from mcap.records import MessageIndex

            for chunk in self._summary.chunk_indexes:
                for channel_id in ids & set(chunk.message_index_offsets):
                    self._file.seek(chunk.message_index_offsets[channel_id])
                    head = self._file.read(9)
                    if len(head) != 9 or head[0] != _MESSAGE_INDEX_OPCODE:
                        raise CorruptFileError(self.uri, f"topic {topic}: the message index of the chunk at byte "
                                                         f"{chunk.chunk_start_offset} is damaged")
                    length = struct.unpack("<Q", head[1:])[0]
                    index = MessageIndex.read(ReadDataStream(io.BytesIO(self._file.read(length))))
                    entries.extend((t, chunk.chunk_start_offset, o) for t, o in index.records)
            counts = self._summary.statistics.channel_message_counts if self._summary.statistics else {}
            if counts and len(entries) != sum(counts.get(i, 0) for i in ids):
                entries = None  # a writer that left out message indexes: fall back to scanning
        if not self.indexed or entries is None:
            entries = [(m.log_time, -1, n) for n, (_, _, m) in enumerate(self._scan(topic))]
        entries.sort()
        self._tables[topic] = entries
        if key is not None and entries and entries[0][1] >= 0:
            _TABLES[key] = entries
            while len(_TABLES) > _TABLES_KEPT:
                _TABLES.popitem(last=False)
        return entries

    def _scan(self, topic: str):
        try:
            yield from self._reader.iter_messages(topics=[topic], log_time_order=True)
        except Exception as exc:  # noqa: BLE001
            raise CorruptFileError(self.uri, f"topic {topic}: the log cannot be scanned ({exc})") from None

    def log_times(self, topic: str) -> list[int]:
        return [t for t, _, _ in self._table(topic)]

    # -- reading messages -------------------------------------------------------------------

    def _chunk_records(self, chunk_offset: int, where: str) -> bytes:
        if self._chunk is not None and self._chunk[0] == chunk_offset:
            return self._chunk[1]
        from mcap.data_stream import ReadDataStream
        from mcap.records import Chunk
        from mcap.stream_reader import get_chunk_data_stream

        try:
            self._file.seek(chunk_offset + 1 + 8)  # opcode, record length
            chunk = Chunk.read(ReadDataStream(self._file))
            stream, length = get_chunk_data_stream(chunk, validate_crc=True)
            records = stream.read(length)
        except Exception as exc:  # noqa: BLE001 — zstd, lz4, CRC and short reads all mean a damaged chunk
            raise CorruptFileError(where, f"its chunk at byte {chunk_offset} does not decompress or fails its "
                                          f"CRC ({type(exc).__name__}: {exc})") from None
        self._chunk = (chunk_offset, records)
        return records

    def _decode(self, channel_id: int, data: bytes, where: str):
        from mcap_ros2.decoder import DecoderFactory

        channel = self._channels[channel_id]
        if channel.message_encoding != "cdr":
            raise FormatMismatchError(where, f"message encoding {channel.message_encoding!r} is not supported "
                                             "(ROS 2 CDR is read; convert ROS 1 logs with their .bag)")
        if channel_id not in self._decoders:
            schema = self._schemas.get(channel.schema_id)
            try:
                decoder = DecoderFactory().decoder_for("cdr", schema)
            except Exception as exc:  # noqa: BLE001
                raise FormatMismatchError(where, f"schema {schema.name if schema else '?'} does not parse "
                                                 f"({exc})") from None
            if decoder is None:  # no schema, or not a ros2msg one (ros2idl, …)
                raise FormatMismatchError(where, f"schema encoding {schema.encoding if schema else 'none'!r} is not "
                                                 "supported (ROS 2 .msg definitions, 'ros2msg', are read)")
            self._decoders[channel_id] = decoder
        try:
            return self._decoders[channel_id](data)
        except Exception as exc:  # noqa: BLE001 — a truncated CDR buffer raises struct/index errors
            raise CorruptFileError(where, f"the message does not decode as {self._schema_name(channel)} "
                                          f"({type(exc).__name__}: {exc})") from None

    def messages(self, topic: str, a: int, b: int) -> Iterator[LogMessage]:
        table = self._table(topic)
        self.check_range(topic, a, b, len(table))
        if a == b:
            return
        if table[a][1] < 0:  # no index: scan
            for n, (_, channel, message) in enumerate(self._scan(topic)):
                if n >= b:
                    return
                if n >= a:
                    where = self.where(topic, n, message.log_time)
                    yield LogMessage(n, message.log_time, self._decode(channel.id, message.data, where))
            return
        for k in range(a, b):
            log_time, chunk_offset, offset = table[k]
            where = self.where(topic, k, log_time)
            records = self._chunk_records(chunk_offset, where)
            if offset + 9 + _MESSAGE_HEAD.size > len(records) or records[offset] != _MESSAGE_OPCODE:
                raise CorruptFileError(where, f"the index points at byte {offset} of its chunk, which holds no "
                                              "message")
            length = struct.unpack_from("<Q", records, offset + 1)[0]
            channel_id, _, stamped, _ = _MESSAGE_HEAD.unpack_from(records, offset + 9)
            if stamped != log_time:
                raise CorruptFileError(where, f"the index says log time {log_time}, the message {stamped}")
            data = records[offset + 9 + _MESSAGE_HEAD.size:offset + 9 + length]
            yield LogMessage(k, log_time, self._decode(channel_id, data, where))

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

