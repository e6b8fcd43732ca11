"""The video-source interface: metadata plus exact decoding of a frame range ``[a, b)``.

Two kinds of source implement it: containers decoded by OpenCV (:mod:`.container`:
mp4, avi, mkv, mov) and image-sequence directories (:mod:`.image_sequence`: one PNG/JPEG
per frame, in name order). :func:`operators.video.open_video` picks one from a URI.

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

    def iter_frames(self, a: int = 0, b: int | None = None) -> Iterator[np.ndarray]:
        """Yield frames ``a .. b-1`` (default: all) one at a time, ``(H, W, 3) uint8`` RGB.

        Prefer this to :meth:`read` for long ranges: only one frame is held at a time.
        """
        b = self.meta.frame_count if b is None else b
        if not 0 <= a <= b <= self.meta.frame_count:
            raise InputError(self.meta.uri, f"frame range [{a}, {b}) is outside the video's "
                                            f"{self.meta.frame_count} frames")
        return self._decode(a, b)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.iter_frames()

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *_) -> None:
        self.close()
