"""Image-sequence directories: one PNG or JPEG per frame, frames in file-name order.

This is how benchmark corpora ship video (Cityscapes-VPS: ``VVVV_FFFF_…_leftImg8bit.png``);
names sort into frame order when their frame numbers are zero-padded, which the field's
naming does. Any fsspec URI works: images are fetched one at a time, never copied whole.
"""
from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError
from operators.video.source import IMAGE_EXTENSIONS, VideoMeta, VideoSource


def image_files(uri: str) -> list[str]:
    """URIs of the image files directly inside directory ``uri``, sorted by name. Hidden
    names are not frames: writers stage files as ``.name.tmp-….png`` until complete."""
    filesystem, path = fs.filesystem(uri)
    try:
        entries = filesystem.ls(path, detail=True)
    except FileNotFoundError:
        raise CorruptFileError(uri, "directory not found") from None
    files = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")
    names = sorted(name for name in files if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."))
    return [fs.join(uri, name) for name in names]


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded PNG/JPEG bytes → ``(H, W, 3) uint8`` RGB (grey and alpha images converted)."""
    buf = np.frombuffer(data, np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if bgr is None:
        raise CorruptFileError(where, "cannot decode image (corrupt or not a PNG/JPEG)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ImageSequenceSource(VideoSource):
    """A directory of frames. ``fps`` is not stored in such a directory: pass it if known.

    The frame size is that of the first image; a later image of another size raises
    :class:`FormatMismatchError` when it is read. Seeking is exact by construction
    (frame ``k`` is the ``k``-th file).
    """

    def __init__(self, uri: str, *, fps: float | None = None):
        self.uri = str(uri).rstrip("/")
        self.files = image_files(self.uri)
        if not self.files:
            raise FormatMismatchError(self.uri, f"directory holds no frames (no {'/'.join(IMAGE_EXTENSIONS)} files)")
        first = self._load(0)
        self.meta = VideoMeta(self.uri, len(self.files), fps, first.shape[1], first.shape[0])

    def _load(self, index: int) -> np.ndarray:
        uri = self.files[index]
        try:
            data = fs.read_bytes(uri)
        except FileNotFoundError:
            raise CorruptFileError(uri, "file not found (removed after the directory was listed)") from None
        return decode_image(data, uri)

    def _decode(self, a: int, b: int) -> Iterator[np.ndarray]:
        for index in range(a, b):
            rgb = self._load(index)
            if rgb.shape[:2] != self.meta.size:
                raise FormatMismatchError(self.files[index], f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]} (WxH), "
                                                             f"the sequence is {self.meta.width}x{self.meta.height} "
                                                             f"(size of {self.files[0]})")
            yield rgb
