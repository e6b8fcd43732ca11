"""Video containers (mp4, avi, mkv, mov) decoded by OpenCV's FFmpeg backend.

OpenCV opens containers by local path only, so a remote URI (``s3://``, ``memory://``)
is first copied whole into a local cache (:func:`operators.fs.local_copy`).

Two things OpenCV reports are not trusted as is:

* **The frame count.** ``CAP_PROP_FRAME_COUNT`` comes from the container header; for
  containers without a sample index (some avi/mkv) it is an estimate from duration × fps,
  and for a damaged file it promises frames that are not there. At open we *verify* it:
  seek to the last frame the header promises, check that it decodes with the timestamp a
  constant-rate stream puts there, and that no frame follows. When that probe fails we count
  by decoding the whole stream once (``grab()`` without colour conversion); the decoded
  count is the one :attr:`VideoMeta.frame_count` reports, the header's stays in
  :attr:`ContainerSource.header_frame_count`. Fewer decodable frames than the header
  promises means a truncated or damaged file (a cut avi or mkv still opens and decodes up to
  the cut; a cut mp4 loses its index, at the end of the file, and does not open at all):
  :class:`CorruptFileError`, unless ``strict=False`` asks to decode what is there. More
  frames than the header says is an underestimate, not damage, and is accepted.
* **Seeking.** ``CAP_PROP_POS_FRAMES`` seeks by timestamp (frame / fps) to the keyframe
  before and decodes forward; with variable frame rates or odd timestamps it lands on
  another frame (the tests build such an mp4). So after every seek we identify the frame we
  landed on by its timestamp (``CAP_PROP_POS_MSEC``): by ``t0 + k / fps`` when the stream
  passed the constant-rate probe above, else by the table of every frame's timestamp kept
  from the counting pass. Landing on the target, or before it (a known position: decode
  forward from there, "the nearest safe point"), gives exact frames; landing after it or
  on a timestamp no frame has switches seeking off for the file, and frames are then
  reached by decoding sequentially from the current position or from the start, which is
  exact by construction. Seeking is a shortcut that must prove itself on every use.
"""
from __future__ import annotations

import bisect
from typing import Iterator

import cv2
import numpy as np

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError
from operators.video.source import VideoMeta, VideoSource

# Reaching a frame this close ahead by decoding forward is cheaper than a seek, which
# restarts decoding at a keyframe before the target anyway.
_SEEK_MIN_SKIP = 16


class ContainerSource(VideoSource):
    """A container file at any fsspec URI, decoded with OpenCV.

    ``allow_seek=False`` forces sequential decoding (the reference the tests compare
    seeking against). ``strict=False`` accepts a file with fewer frames than its header
    promises. :attr:`frame_count_by` says how the count was verified (``"seek probe"`` or
    ``"decoding"``), :attr:`seeks` how the seeks of reads went. Not thread-safe: one reader
    at a time, one open iterator at a time.
    """

    def __init__(self, uri: str, *, allow_seek: bool = True, strict: bool = True):
        self.uri = str(uri)
        self.strict = strict
        try:
            if not fs.exists(self.uri):
                raise FileNotFoundError(self.uri)
            self._path = fs.local_copy(self.uri)
        except FileNotFoundError:
            raise CorruptFileError(self.uri, "file not found") from None
        self.seeking = allow_seek  # switched off when a seek lands where it cannot be used
        self.seeks = {"exact": 0, "recovered": 0, "failed": 0}  # outcomes of read seeks, for tests and logs
        self._timestamps: list[float] | None = None  # every frame's timestamp (ms), once counted by decoding
        self._cap: cv2.VideoCapture | None = None
        self._next = 0  # index of the frame the next grab() returns; -1 when not known exactly
        cap = self._reopen()
        self.header_frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width <= 0 or height <= 0 or not cap.grab():
            self.close()
            raise CorruptFileError(self.uri, "the container opens but holds no decodable video frame")
        self._next = 1
        self._t0_ms = float(cap.get(cv2.CAP_PROP_POS_MSEC))
        self.fps = fps if fps > 0 else None
        self.meta = VideoMeta(self.uri, self._verified_frame_count(), self.fps, width, height)

    # -- opening and positioning ---------------------------------------------------------

    def _reopen(self) -> cv2.VideoCapture:
        if self._cap is not None:
            self._cap.release()
        cap = cv2.VideoCapture(self._path, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            raise CorruptFileError(self.uri, "OpenCV cannot open it as a video (truncated, corrupt or not a video)")
        self._cap, self._next = cap, 0
        return cap

    def _frame_at(self, ms: float) -> int | None:
        """The index of the frame whose timestamp is ``ms``, or None if no frame has it.

        With every timestamp known (the file was counted by decoding) this is a lookup;
        otherwise the stream passed the constant-rate probe and frame k sits at
        ``t0 + k / fps`` (a quarter of a frame period of tolerance).
        """
        if self._timestamps is not None:
            k = bisect.bisect_left(self._timestamps, ms - 1e-3)
            return k if k < len(self._timestamps) and abs(self._timestamps[k] - ms) <= 1e-3 else None
        if self.fps is None:
            return None
        k = round((ms - self._t0_ms) * self.fps / 1000.0)
        return k if k >= 0 and abs(self._t0_ms + k * 1000.0 / self.fps - ms) < 250.0 / self.fps else None

    def _seek(self, index: int) -> int | None:
        """Seek towards ``index`` and grab; the index of the frame actually grabbed, or None."""
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        landed = self._frame_at(float(self._cap.get(cv2.CAP_PROP_POS_MSEC))) if self._cap.grab() else None
        self._next = -1 if landed is None else landed + 1
        return landed

    def _grab_until(self, stop: int) -> None:
        """grab() forward until the next frame is ``stop``."""
        while self._next < stop:
            if not self._cap.grab():
                index, self._next = self._next, -1
                raise self._undecodable(index)
            self._next += 1

    def _verified_frame_count(self) -> int:
        n = self.header_frame_count
        self.frame_count_by = "seek probe"
        if n == 1 and not self._cap.grab():
            self._next = -1
            return 1
        if n > 1 and self.seeking and self._seek(n - 1) == n - 1:
            if not self._cap.grab():  # the header's last frame is the last one there is
                self._next = -1
                return n
        # The probe failed: count by decoding, keeping every frame's timestamp so that later
        # seeks can tell exactly where they landed. grab() demuxes and decodes but skips the
        # colour conversion; this costs one decode pass of the file, once.
        self.frame_count_by = "decoding"
        self._reopen()
        self._timestamps = []
        while self._cap.grab():
            self._timestamps.append(float(self._cap.get(cv2.CAP_PROP_POS_MSEC)))
        self._next = -1
        count = len(self._timestamps)
        if any(b <= a for a, b in zip(self._timestamps, self._timestamps[1:])):
            self._timestamps = None  # timestamps that do not increase cannot identify frames: no seeking
            self.seeking = False
        if count == 0 or (self.strict and count < n):
            self.close()
            raise CorruptFileError(self.uri, f"the header promises {n} frames but only {count} decode "
                                             "(truncated or corrupt file)")
        return count

    def _position_at(self, a: int) -> bool:
        """Position the decoder at frame ``a``, exactly. True if frame ``a`` has already been
        grabbed (retrieve it next), False if the next grab() returns it.

        A seek is used when it saves decoding; the frame it lands on is identified by its
        timestamp. Landing on ``a`` or before it is a known position to decode forward from
        (a keyframe, "the nearest safe point"); landing after ``a``, or on a timestamp no
        frame has, switches seeking off for this file, and frames are then reached by
        decoding forward from the current position or from the start.
        """
        if self._next == a:
            return False
        ahead = a - self._next if self._next >= 0 else -1
        if self.seeking and a > 0 and not 0 <= ahead < _SEEK_MIN_SKIP:
            landed = self._seek(a)
            if landed is not None and landed <= a:
                self.seeks["exact" if landed == a else "recovered"] += 1
                self._grab_until(a + 1)
                return True
            self.seeks["failed"] += 1
            self.seeking = False
        if self._next < 0 or self._next > a:
            self._reopen()
        self._grab_until(a)
        return False

    def _undecodable(self, index: int) -> CorruptFileError:
        return CorruptFileError(self.uri, f"frame {index} of {self.meta.frame_count} does not decode "
                                          "(truncated or corrupt file)")

    # -- decoding ------------------------------------------------------------------------

    def _decode(self, a: int, b: int) -> Iterator[np.ndarray]:
        if a == b:
            return
        grabbed = self._position_at(a)
        for index in range(a, b):
            if grabbed:  # the verified seek already grabbed frame a
                grabbed = False
            else:
                if not self._cap.grab():
                    self._next = -1
                    raise self._undecodable(index)
                self._next = index + 1
            ok, bgr = self._cap.retrieve()
            self._last_ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
            if not ok or bgr is None:
                self._next = -1
                raise self._undecodable(index)
            if bgr.shape[:2] != self.meta.size:
                raise FormatMismatchError(self.uri, f"frame {index} is {bgr.shape[1]}x{bgr.shape[0]} (WxH), the "
                                                    f"video is {self.meta.width}x{self.meta.height}")
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _decode_timed(self, a: int, b: int) -> Iterator[tuple[np.ndarray, int | None]]:
        """Frames with their presentation time relative to the first frame's, in ns, plus the
        container's creation time (:attr:`creation_time_ns`) when it records one."""
        for rgb in self._decode(a, b):
            yield rgb, round((self._last_ms - self._t0_ms) * 1e6) + (self.creation_time_ns or 0)

    @property
    def creation_time_ns(self) -> int | None:
        """The container's recorded creation time (Unix ns), or None: read from an mp4/mov's
        ``mvhd`` box (seconds since 1904; 0 means not recorded). Other containers: None."""
        if not hasattr(self, "_creation_ns"):
            self._creation_ns = mp4_creation_time_ns(self._path) if self.uri.lower().endswith((".mp4", ".mov")) \
                else None
        return self._creation_ns

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


_MP4_EPOCH_TO_UNIX_S = 2_082_844_800  # seconds from 1904-01-01 (ISO BMFF's epoch) to 1970-01-01


def mp4_creation_time_ns(path: str) -> int | None:
    """The ``creation_time`` of an mp4/mov's movie header (``moov/mvhd``) as Unix ns, or None when
    the file records none (0, as OpenCV's writer leaves it) or the boxes cannot be walked."""
    import struct

    def boxes(f, end):
        while f.tell() + 8 <= end:
            start = f.tell()
            size, kind = struct.unpack(">I4s", f.read(8))
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
            elif size == 0:
                size = end - start
            if size < 8:
                return
            yield kind, start, f.tell(), start + size
            f.seek(start + size)

    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(0)
            for kind, _, body, end in boxes(f, size):
                if kind != b"moov":
                    continue
                f.seek(body)
                for inner, _, inner_body, _ in boxes(f, end):
                    if inner == b"mvhd":
                        f.seek(inner_body)
                        version = f.read(4)[0]
                        created = struct.unpack(">Q" if version == 1 else ">I", f.read(8 if version == 1 else 4))[0]
                        return (created - _MP4_EPOCH_TO_UNIX_S) * 1_000_000_000 if created else None
                return None
    except (OSError, struct.error, IndexError):
        return None
    return None
