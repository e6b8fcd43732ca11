"""Writing an mp4 (or avi/mkv) from RGB frames to any fsspec URI, atomically."""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from operators import fs


class VideoWriter(fs.StagedFile):
    """Write ``(H, W, 3) uint8`` RGB frames into a video at ``uri``.

    Frames go to a hidden local temporary file (OpenCV writes by path only); :meth:`close`
    moves it into place (local) or uploads it (object stores), so the final name never holds
    a half-written video. Leaving the ``with`` block through an exception discards the file.
    The size is taken from the first frame. ``fourcc`` ``mp4v`` (MPEG-4 Part 2) is the codec
    every OpenCV build can both write and read back; it is lossy, so decoded frames are
    close to, not equal to, what was written.
    """

    def __init__(self, uri: str, fps: float, *, fourcc: str = "mp4v"):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        super().__init__(uri)
        self.fps, self.fourcc = float(fps), fourcc
        self.frames_written = 0
        self._size: tuple[int, int] | None = None  # (H, W)
        self._path = self.local_path
        self._writer: cv2.VideoWriter | None = None

    def write(self, rgb: np.ndarray) -> None:
        """Append one ``(H, W, 3) uint8`` RGB frame."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {rgb.shape} {rgb.dtype}")
        if self._writer is None:
            self._size = rgb.shape[:2]
            self._writer = cv2.VideoWriter(self._path, cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                           (rgb.shape[1], rgb.shape[0]))
            if not self._writer.isOpened():
                self.abort()
                raise RuntimeError(f"OpenCV cannot write {self.fourcc!r} video to {self.uri}")
        elif rgb.shape[:2] != self._size:
            raise ValueError(f"frame {self.frames_written} is {rgb.shape[1]}x{rgb.shape[0]} (WxH), the video "
                             f"{self.uri} is {self._size[1]}x{self._size[0]}")
        self._writer.write(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
        self.frames_written += 1

    def write_all(self, frames: Iterable[np.ndarray]) -> None:
        for rgb in frames:
            self.write(rgb)

    def _finish(self) -> None:
        if self._writer is None:
            self.abort()
            raise ValueError(f"no frame was written to {self.uri}")
        self._writer.release()

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
