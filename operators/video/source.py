"""The video-source interface: metadata plus exact decoding of a frame range ``[a, b)``.

Three kinds of source implement it: containers decoded by OpenCV (:mod:`.container`:
mp4, avi, mkv, mov), image-sequence directories (:mod:`.image_sequence`: one PNG/JPEG
per frame, in name order) and the camera topics of driving logs (:mod:`.logs`: MCAP, ROS 1
bags). :func:`operators.video.open_video` picks one from a URI.

Every frame comes out as ``(H, W, 3) uint8`` RGB, whatever the file stores (OpenCV decodes
BGR; sources convert), so the dataflow never has to know where a frame came from.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from operators.errors import InputError

CONTAINER_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class VideoMeta:
    """What a source knows about its video before decoding it.

    ``frame_count`` is verified (see :class:`~operators.video.container.ContainerSource`),
    not copied from a header. ``fps`` is ``None`` for an image sequence opened without one.
    """

    uri: str
    frame_count: int
    fps: float | None
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        """(H, W), the shape of every frame without its channel axis."""
        return (self.height, self.width)


class VideoSource(abc.ABC):
    """A decodable video: :attr:`meta`, :meth:`read` of a frame range, and iteration.

    Sources hold an open decoder; use them as context managers (or call :meth:`close`).
    """

    meta: VideoMeta

    @abc.abstractmethod
    def _decode(self, a: int, b: int) -> Iterator[np.ndarray]:
        """Yield frames ``a .. b-1`` (already range-checked) as ``(H, W, 3) uint8`` RGB."""

    def _decode_timed(self, a: int, b: int) -> Iterator[tuple[np.ndarray, int | None]]:
        """Yield ``(frame, timestamp_ns)`` for frames ``a .. b-1``; None where the source has no
        times (an image directory). Sources that know times override this."""
        for rgb in self._decode(a, b):
            yield rgb, None

    def close(self) -> None:  # noqa: B027 — sources without a decoder handle have nothing to free
        """Release the decoder."""

    def __len__(self) -> int:
        return self.meta.frame_count

    def read(self, a: int, b: int) -> np.ndarray:
        """Frames ``[a, b)`` as one ``(b - a, H, W, 3) uint8`` RGB array, decoded exactly."""
        frames = list(self.iter_frames(a, b))
        if not frames:
            return np.zeros((0, self.meta.height, self.meta.width, 3), np.uint8)
        return np.stack(frames)

    def read_timed(self, a: int, b: int) -> tuple[np.ndarray, list[int | None]]:
        """Frames ``[a, b)`` as :meth:`read` gives them, and each frame's timestamp in ns (or None).

        Logs: the message header's stamp (the log time when the stamp is zero). Containers: the
        presentation time relative to the stream's first frame, plus the container's creation
        time when it records one (else the times start at 0). Image directories: None.
        """
        self._check_range(a, b)
        frames, times = [], []
        for rgb, t in self._decode_timed(a, b):
            frames.append(rgb)
            times.append(t)
        if not frames:
            return np.zeros((0, self.meta.height, self.meta.width, 3), np.uint8), []
        return np.stack(frames), times

    def _check_range(self, a: int, b: int) -> None:
        if not 0 <= a <= b <= self.meta.frame_count:
            raise InputError(self.meta.uri, f"frame range [{a}, {b}) is outside the video's "
                                            f"{self.meta.frame_count} frames")

    def iter_frames(self, a: int = 0, b: int | None = None) -> Iterator[np.ndarray]:
        """Yield frames ``a .. b-1`` (default: all) one at a time, ``(H, W, 3) uint8`` RGB.

        Prefer this to :meth:`read` for long ranges: only one frame is held at a time.
        """
        b = self.meta.frame_count if b is None else b
        self._check_range(a, b)
        return self._decode(a, b)

    def iter_timed(self, a: int = 0, b: int | None = None) -> Iterator[tuple[np.ndarray, int | None]]:
        """Yield ``(frame, timestamp_ns or None)`` for frames ``a .. b-1`` (see :meth:`read_timed`)."""
        b = self.meta.frame_count if b is None else b
        self._check_range(a, b)
        return self._decode_timed(a, b)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.iter_frames()

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *_) -> None:
        self.close()
