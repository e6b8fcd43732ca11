"""Video containers (mp4, avi, mkv, mov) decoded by OpenCV's FFmpeg backend.

OpenCV opens containers by local path only, so a remote URI (``s3://``, ``memory://``)
is first copied whole into fsspec's local file cache (:func:`operators.fs.local_copy`).

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
  before and decodes forward; with variable frame rates or odd timestamps it can land on a
  neighbouring frame. After every seek we compare the landed frame's timestamp
  (``CAP_PROP_POS_MSEC``) with ``t0 + a / fps`` (half a frame of tolerance). If it
  disagrees, seeking is switched off for this file and frames are reached by decoding
  sequentially from the nearest position known exactly (the current one if it is before
  ``a``, else the start of the file). Sequential decoding is exact by construction; seeking
  is only a shortcut that must prove itself.
"""
from __future__ import annotations

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
    promises. :attr:`frame_count_by` says how the count was verified: ``"seek probe"`` or
    ``"decoding"``.
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
        self.seek_exact: bool | None = None if allow_seek else False  # None: not tested yet
        self._cap: cv2.VideoCapture | None = None
        self._next = 0  # index of the frame the next grab() returns, when known exactly
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

    def _timestamp_matches(self, index: int) -> bool:
        """Whether the frame just grabbed has the timestamp frame ``index`` has at constant rate."""
        if self.fps is None:
            return False
        expected = self._t0_ms + index * 1000.0 / self.fps
        return abs(float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) - expected) < 500.0 / self.fps

    def _seek_and_grab(self, index: int) -> bool:
        """Seek to ``index`` and grab it; True only if the landing is verified exact."""
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        if self._cap.grab() and self._timestamp_matches(index):
            self._next = index + 1
            return True
        self._next = -1  # position unknown: the next read starts over
        return False

    def _verified_frame_count(self) -> int:
        n = self.header_frame_count
        self.frame_count_by = "seek probe"
        if n == 1 and not self._cap.grab():
            self._next = -1
            return 1
        if n > 1 and self.seek_exact is not False and self._seek_and_grab(n - 1):
            if not self._cap.grab():  # the header's last frame is the last one there is
                self._next = -1
                return n
        # The probe failed: count by decoding. grab() demuxes and decodes but skips the
        # colour conversion, so this costs one decode pass of the file, once.
        self.frame_count_by = "decoding"
        self._reopen()
        count = 0
        while self._cap.grab():
            count += 1
        self._next = -1
        if count == 0 or (self.strict and count < n):
            self.close()
            raise CorruptFileError(self.uri, f"the header promises {n} frames but only {count} decode "
                                             "(truncated or corrupt file)")
        return count

    def _position_at(self, a: int) -> bool:
        """Position the decoder at frame ``a``, exactly. True if a verified seek has already
        grabbed frame ``a`` (retrieve it next), False if the next grab() returns it."""
        if self._next == a:
            return False
        ahead = a - self._next if self._next >= 0 else -1
        if self.seek_exact is not False and a > 0 and not 0 <= ahead < _SEEK_MIN_SKIP:
            if self._seek_and_grab(a):
                self.seek_exact = True
                return True
            self.seek_exact = False  # proved inexact for this file: decode sequentially from now on
        if self._next < 0 or self._next > a:
            self._reopen()
        while self._next < a:
            if not self._cap.grab():
                raise self._undecodable(self._next)
            self._next += 1
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
            if not ok or bgr is None:
                self._next = -1
                raise self._undecodable(index)
            if bgr.shape[:2] != self.meta.size:
                raise FormatMismatchError(self.uri, f"frame {index} is {bgr.shape[1]}x{bgr.shape[0]} (WxH), the "
                                                    f"video is {self.meta.width}x{self.meta.height}")
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
