"""Motion-JPEG in an AVI container, written from JPEG bytes: no decoding, no re-encoding.

An overlay video is rendered frame by frame where the frames already are (the labelling
pipeline's sink) and each frame JPEG-encoded there; this writer only puts the JPEG bytes one
after another into a RIFF AVI file with an index, so assembling a video costs a copy of its
bytes. Every player and OpenCV (FFmpeg's demuxer and OpenCV's own MJPEG backend) reads it.

The layout is AVI 1.0 with the OpenDML 1.02 extension, as FFmpeg and OpenCV write it::

    RIFF 'AVI '  LIST 'hdrl' (avih; LIST 'strl' (strh, strf, indx); LIST 'odml' (dmlh))
                 LIST 'movi' ('00dc' JPEG chunks…, 'ix00' index of this RIFF's chunks)
                 idx1 (the AVI 1.0 index of this first RIFF's frames)
    RIFF 'AVIX'  LIST 'movi' ('00dc'…, 'ix00')            ← only past ``riff_limit`` bytes
    …

AVI 1.0 stores sizes and offsets in 32 bits (players cap a RIFF at 1 GiB); OpenDML lets a file
grow past that in further ``AVIX`` RIFFs, each with its own chunk index (``ix00``), all listed
in the stream's super index (``indx``, :data:`SUPER_INDEX_ENTRIES` entries reserved: at the
default :data:`RIFF_LIMIT` a file of up to 256 GiB). Every frame is a key frame.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Iterable

from operators import fs

RIFF_LIMIT = 1 << 30
"""Bytes after which the writer starts the next RIFF (the first RIFF holds the AVI 1.0 index
that old readers use; 1 GiB is the size they all accept)."""
SUPER_INDEX_ENTRIES = 256
"""RIFFs the ``indx`` super index has room for (reserved in the header, 16 bytes each)."""
_CHUNK_ID = b"00dc"  # stream 0, compressed video
_AVIF_HASINDEX, _AVIF_ISINTERLEAVED, _AVIF_TRUSTCKTYPE = 0x10, 0x100, 0x800
_AVIIF_KEYFRAME = 0x10
_DMLH_SIZE = 248


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(height, width) from a baseline or progressive JPEG's start-of-frame marker, without
    decoding it. Raises ValueError for bytes that are not a JPEG."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    i = 2
    while i + 4 <= len(jpeg):
        if jpeg[i] != 0xFF:
            raise ValueError(f"not a JPEG (no marker at byte {i})")
        marker = jpeg[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            if i + 9 > len(jpeg):
                break
            height, width = struct.unpack(">HH", jpeg[i + 5:i + 9])
            return height, width
        i += 2 + length
    raise ValueError("not a JPEG (no start-of-frame marker)")


class _Riff:
    """One RIFF of the file being written: where its sizes go and the chunks it holds."""

    def __init__(self, start: int, movi: int):
        self.start, self.movi = start, movi  # offsets of the 'RIFF' and of the 'LIST' of its 'movi'
        self.chunks: list[tuple[int, int]] = []  # (offset of the chunk's data, size) per frame
        self.index_at = 0  # offset of its 'ix00' chunk, once closed


class MjpegAviWriter(fs.StagedFile):
    """Write JPEG frames into a Motion-JPEG AVI at ``uri`` (any fsspec URI), atomically: the file
    is built at a hidden local path and published on :meth:`close` (a ``with`` block left through
    an exception publishes nothing).

    ``fps`` is stored as the rational ``round(fps * 1000) / 1000``. Every frame must have the
    size of the first (read from its JPEG header, :func:`jpeg_size`); a frame of another size is
    a ValueError naming the frame and the file.
    """

    def __init__(self, uri: str, fps: float, *, riff_limit: int = RIFF_LIMIT):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        super().__init__(uri)
        self.fps = float(fps)
        self.riff_limit = int(riff_limit)
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (H, W)
        self._max_chunk = 0
        self._riffs: list[_Riff] = []
        self._out: BinaryIO | None = open(self.local_path, "wb")
        self._header_at = 0
        self._write_header()  # placeholders, filled in by _finish
        self._open_riff(first=True)

    # ------------------------------------------------------------------ layout
    def _rate(self) -> tuple[int, int]:
        """(dwScale, dwRate): frames per second as rate / scale."""
        return 1000, max(1, round(self.fps * 1000))

    def _header(self) -> bytes:
        """'RIFF' size 'AVI ' and LIST 'hdrl', with what is known now (all of it at the end)."""
        height, width = self.size or (0, 0)
        scale, rate = self._rate()
        total = self.frames_written
        first_riff_frames = len(self._riffs[0].chunks) if self._riffs else 0
        buffer = self._max_chunk + 8
        avih = struct.pack("<10I4I", round(1e6 * scale / rate), round(buffer * rate / scale), 0,
                           _AVIF_HASINDEX | _AVIF_ISINTERLEAVED | _AVIF_TRUSTCKTYPE, first_riff_frames, 0, 1, buffer,
                           width, height, 0, 0, 0, 0)
        strh = b"vidsMJPG" + struct.pack("<IHHIIIIIIiI4h", 0, 0, 0, 0, scale, rate, 0, total, buffer, -1, 0,
                                         0, 0, width, height)
        strf = struct.pack("<IiiHH4sIiiII", 40, width, height, 1, 24, b"MJPG", width * height * 3, 0, 0, 0, 0)
        entries = [(r.index_at, self._index_size(r), len(r.chunks)) for r in self._riffs if r.index_at]
        indx = struct.pack("<HBBI4s3I", 4, 0, 0, len(entries), _CHUNK_ID, 0, 0, 0)
        indx += b"".join(struct.pack("<QII", *e) for e in entries)
        indx += bytes(16 * (SUPER_INDEX_ENTRIES - len(entries)))
        strl = b"strl" + _chunk(b"strh", strh) + _chunk(b"strf", strf) + _chunk(b"indx", indx)
        odml = b"odml" + _chunk(b"dmlh", struct.pack("<I", total) + bytes(_DMLH_SIZE - 4))
        hdrl = b"hdrl" + _chunk(b"avih", avih) + _chunk(b"LIST", strl) + _chunk(b"LIST", odml)
        return _chunk(b"LIST", hdrl)

    def _write_header(self) -> None:
        self._out.write(b"RIFF\0\0\0\0AVI ")  # the first RIFF's size is patched in _close_riff
        self._header_at = self._out.tell()
        self._out.write(self._header())

    def _open_riff(self, first: bool = False) -> None:
        out = self._out
        start = 0 if first else out.tell()
        if not first:
            out.write(b"RIFF\0\0\0\0AVIX")
        movi = out.tell()
        out.write(b"LIST\0\0\0\0movi")
        self._riffs.append(_Riff(start, movi))

    @staticmethod
    def _index_size(riff: _Riff) -> int:
        return 8 + 24 + 8 * len(riff.chunks)  # 'ix00' chunk: header, fields, one entry per frame

    def _close_riff(self) -> None:
        """End the current RIFF: its chunk index ('ix00'), for the first the AVI 1.0 'idx1', sizes."""
        out, riff = self._out, self._riffs[-1]
        riff.index_at = out.tell()
        base = riff.movi  # qwBaseOffset: chunk offsets are relative to it
        out.write(_chunk(b"ix00", struct.pack("<HBBI4sQI", 2, 0, 1, len(riff.chunks), _CHUNK_ID, base, 0)
                         + b"".join(struct.pack("<II", at - base, size) for at, size in riff.chunks)))
        movi_end = out.tell()
        if riff.start == 0:  # idx1: offsets from the 'movi' fourcc, pointing at each chunk's header
            out.write(_chunk(b"idx1", b"".join(struct.pack("<4sIII", _CHUNK_ID, _AVIIF_KEYFRAME, at - 8 - (base + 8),
                                                           size) for at, size in riff.chunks)))
        end = out.tell()
        out.seek(riff.movi + 4)
        out.write(struct.pack("<I", movi_end - riff.movi - 8))
        out.seek(riff.start + 4)
        out.write(struct.pack("<I", end - riff.start - 8))
        out.seek(end)

    # ------------------------------------------------------------------ frames
    def write(self, jpeg: bytes) -> None:
        """Append one frame, a complete JPEG file's bytes."""
        size = jpeg_size(jpeg)
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise ValueError(f"frame {self.frames_written} is {size[1]}x{size[0]} (WxH), the video {self.uri} is "
                             f"{self.size[1]}x{self.size[0]}")
        out, riff = self._out, self._riffs[-1]
        if riff.chunks and out.tell() - riff.start + 8 + len(jpeg) + self._index_size(riff) + 16 * len(
                riff.chunks) + 64 > self.riff_limit:
            if len(self._riffs) == SUPER_INDEX_ENTRIES:
                raise ValueError(f"{self.uri}: the super index has room for {SUPER_INDEX_ENTRIES} RIFFs of "
                                 f"{self.riff_limit} bytes")
            self._close_riff()
            self._open_riff()
            riff = self._riffs[-1]
        out.write(_CHUNK_ID + struct.pack("<I", len(jpeg)))
        riff.chunks.append((out.tell(), len(jpeg)))
        out.write(jpeg)
        if len(jpeg) % 2:
            out.write(b"\0")  # RIFF chunks are word-aligned
        self._max_chunk = max(self._max_chunk, len(jpeg))
        self.frames_written += 1

    def write_all(self, frames: Iterable[bytes]) -> None:
        for jpeg in frames:
            self.write(jpeg)

    def _finish(self) -> None:
        if not self.frames_written:
            self.abort()
            raise ValueError(f"no frame was written to {self.uri}")
        self._close_riff()
        end = self._out.tell()
        self._out.seek(self._header_at)
        self._out.write(self._header())  # same length as the placeholder: only numbers changed
        self._out.seek(end)
        self._out.close()
        self._out = None

    def _release(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
