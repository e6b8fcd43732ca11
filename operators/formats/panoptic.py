"""COCO-panoptic frames: a PNG whose pixel id = R + 256·G + 65536·B (0 = VOID) plus the
JSON ``segments_info`` that gives each id its category.

A :class:`PanopticFrame` is the in-memory form used everywhere in tubeflow: an ``(H, W)
int32`` id map and the list of its :class:`SegmentInfo`.
"""
from __future__ import annotations

import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import cv2
import numpy as np

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError

try:  # libspng: about twice as fast as OpenCV on 8-bit RGB PNGs; OpenCV decodes everything else
    import pyspng
except ImportError:  # pragma: no cover - pyspng is a dependency; the OpenCV path is the fallback
    pyspng = None

VOID = 0
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB, _RGBA = 2, 6  # PNG colour types (IHDR)


@dataclass
class SegmentInfo:
    """One entry of COCO-panoptic ``segments_info``. ``bbox`` is (x, y, w, h)."""

    id: int
    category_id: int
    area: int = 0
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    iscrowd: int = 0
    score: float | None = None

    def to_json(self) -> dict:
        record = {"id": int(self.id), "category_id": int(self.category_id), "area": int(self.area),
                  "bbox": [int(v) for v in self.bbox], "iscrowd": int(self.iscrowd)}
        if self.score is not None:
            record["score"] = float(self.score)
        return record

    @classmethod
    def from_json(cls, record: Mapping, where: str = "segments_info") -> "SegmentInfo":
        try:
            score = record.get("score")
            return cls(id=int(record["id"]), category_id=int(record["category_id"]),
                       area=int(record.get("area", 0)), bbox=tuple(int(v) for v in record.get("bbox", (0, 0, 0, 0))),
                       iscrowd=int(record.get("iscrowd", 0)), score=None if score is None else float(score))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FormatMismatchError(where, f"malformed segment record {record!r}: {exc}") from None


@dataclass
class PanopticFrame:
    """A panoptic frame: ``ids`` is ``(H, W) int32`` (0 = VOID), ``segments`` its segments_info."""

    ids: np.ndarray
    segments: list[SegmentInfo] = field(default_factory=list)

    def segment(self, segment_id: int) -> SegmentInfo:
        for s in self.segments:
            if s.id == segment_id:
                return s
        raise KeyError(segment_id)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB → ``(H, W) int32`` ids (R + 256·G + 65536·B)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    rgb = rgb.astype(np.int32, copy=False)
    return rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """``(H, W)`` integer ids → ``(H, W, 3) uint8`` RGB; ids must be in [0, 2**24)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError("panoptic ids must lie in [0, 2**24)")
    ids = ids.astype(np.uint32, copy=False)
    return np.stack([ids & 0xFF, (ids >> 8) & 0xFF, (ids >> 16) & 0xFF], axis=-1).astype(np.uint8)


def imdecode_png(data: bytes, where: str) -> np.ndarray:
    """PNG bytes → the array OpenCV decodes, unchanged: ``(H, W, 3|4)`` BGR(A) or
    ``(H, W)`` grey, of the file's bit depth. Raises :class:`CorruptFileError` naming ``where``."""
    buf = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if image is None:
        raise CorruptFileError(where, "cannot decode PNG (corrupt or not an image)")
    return image


def decode_panoptic_png(data: bytes, where: str) -> np.ndarray:
    """PNG bytes → ``(H, W) int32`` ids. Raises :class:`CorruptFileError` naming ``where``.

    An intact 8-bit RGB(A) PNG is decoded by libspng (``pyspng``) straight into RGBA whose
    4 bytes per pixel are one little-endian uint32, id = that & 0xFFFFFF: no per-channel
    arithmetic. Every other PNG — grey, palette, 16-bit, a bad checksum, a truncated file,
    anything libspng rejects — goes to OpenCV, so results and errors are OpenCV's.
    """
    if pyspng is not None and sys.byteorder == "little" and _is_intact_8bit_rgb_png(data):
        try:
            rgba = pyspng.load(data, "RGBA")
        except RuntimeError:  # libspng's errors (e.g. a bad zlib stream): OpenCV gives the verdict
            pass
        else:
            return _ids_from_rgba(rgba)
    return ids_from_decoded(imdecode_png(data, where), where)


def _is_intact_8bit_rgb_png(data: bytes) -> bool:
    """True when ``data`` is a PNG with an 8-bit RGB or RGBA IHDR whose chunks all fit in
    the file with matching CRCs, ending with IEND at the file's end.

    pyspng tells libspng to ignore chunk CRCs and stops reading after the image data; libpng
    (OpenCV) rejects a bad CRC of a critical chunk and a file cut before IEND. Checking the
    chunks here (≈ 0.01 ms for a 2-Mpx panoptic PNG) sends such files to OpenCV, so both
    decoders accept the same files.
    """
    if len(data) < 45 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    bit_depth, colour_type = data[24], data[25]
    if bit_depth != 8 or colour_type not in (_RGB, _RGBA):
        return False
    view, pos, end_of_file = memoryview(data), 8, len(data)
    while pos + 12 <= end_of_file:
        (length,) = struct.unpack_from(">I", data, pos)
        chunk_end = pos + 12 + length
        if chunk_end > end_of_file:
            return False
        (crc,) = struct.unpack_from(">I", data, chunk_end - 4)
        if zlib.crc32(view[pos + 4:chunk_end - 4]) != crc:  # CRC covers chunk type + data
            return False
        if data[pos + 4:pos + 8] == b"IEND":
            return chunk_end == end_of_file
        pos = chunk_end
    return False


def _ids_from_rgba(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4) uint8`` C-contiguous RGBA → ``(H, W) int32`` ids, in place (little-endian:
    R is the low byte of the uint32 view, alpha the high byte, masked off)."""
    ids = rgba.view(np.uint32)[..., 0]
    np.bitwise_and(ids, 0x00FFFFFF, out=ids)
    return ids.view(np.int32)  # < 2**24: the same values as int32


def ids_from_decoded(bgr: np.ndarray, where: str) -> np.ndarray:
    """An :func:`imdecode_png` array → ``(H, W) int32`` ids."""
    if bgr.ndim == 2:  # a single-channel PNG holds ids < 256 directly
        return bgr.astype(np.int32)
    if bgr.dtype != np.uint8 or bgr.shape[2] not in (3, 4):
        raise CorruptFileError(where, f"panoptic PNG must be 8-bit RGB, got {bgr.dtype} with {bgr.shape[2]} channels")
    if sys.byteorder == "little":  # one cvtColor to RGBA, then the uint32 view (faster than 3 int32 planes)
        return _ids_from_rgba(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA if bgr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA))
    return rgb_to_id(bgr[..., 2::-1])  # OpenCV decodes BGR(A); ids are defined on RGB


def read_panoptic_png(uri: str) -> np.ndarray:
    """Read a COCO-panoptic PNG from any fsspec URI as ``(H, W) int32`` ids."""
    return decode_panoptic_png(fs.read_input(uri), uri)


def encode_rgb_png(rgb: np.ndarray) -> bytes:
    """``(H, W, 3) uint8`` RGB → PNG bytes (frames and panoptic id maps alike)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))  # RGB → OpenCV's BGR
    if not ok:
        raise RuntimeError("OpenCV failed to encode a PNG")
    return buf.tobytes()


def encode_panoptic_png(ids: np.ndarray) -> bytes:
    return encode_rgb_png(id_to_rgb(ids))


def write_panoptic_png(uri: str, ids: np.ndarray) -> None:
    """Write ``(H, W)`` ids as a COCO-panoptic PNG (atomically)."""
    fs.write_bytes(uri, encode_panoptic_png(ids))


def segments_from_ids(ids: np.ndarray, category_of: Mapping[int, int], iscrowd_of: Mapping[int, int] | None = None,
                      score_of: Mapping[int, float] | None = None) -> list[SegmentInfo]:
    """Build segments_info (area, bbox) for every non-VOID id of ``ids``, in increasing id order."""
    ids = np.asarray(ids)
    # Ids are < 2**24: a bincount plus a lookup table labels the pixels 1..n without sorting
    # them, then find_objects gets every bounding box in one pass over the pixels.
    counts = np.bincount(ids.ravel())
    present = np.flatnonzero(counts)
    areas = counts[present]
    lookup = np.zeros(len(counts), np.int32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    from scipy import ndimage  # here: importing it costs every reader of PNGs ~0.3 s of start-up

    boxes = ndimage.find_objects(lookup[ids])
    segments = []
    for seg_id, area, (rows, cols) in zip(present.tolist(), areas.tolist(), boxes):
        if seg_id == VOID:
            continue
        bbox = (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        segments.append(SegmentInfo(seg_id, int(category_of[seg_id]), int(area), bbox,
                                    int((iscrowd_of or {}).get(seg_id, 0)),
                                    None if score_of is None else float(score_of[seg_id])))
    return segments


def validate_frame(frame: PanopticFrame, where: str, known_categories: Iterable[int] | None = None,
                   expected_size: tuple[int, int] | None = None) -> None:
    """Check that the PNG ids and the segments_info agree, categories are known and the size
    is right. Raises :class:`FormatMismatchError` naming ``where``."""
    if expected_size is not None and tuple(frame.ids.shape) != tuple(expected_size):
        raise FormatMismatchError(where, f"frame size {frame.ids.shape[1]}x{frame.ids.shape[0]} (WxH) differs from "
                                         f"the expected {expected_size[1]}x{expected_size[0]}")
    json_ids = [s.id for s in frame.segments]
    if len(set(json_ids)) != len(json_ids):
        raise FormatMismatchError(where, "segments_info lists a segment id twice")
    png_ids = set(np.unique(frame.ids).tolist()) - {VOID}
    only_png = sorted(png_ids - set(json_ids))
    only_json = sorted(set(json_ids) - png_ids)
    if only_png:
        raise FormatMismatchError(where, f"segment ids {only_png[:10]} are in the PNG but not in segments_info")
    if only_json:
        raise FormatMismatchError(where, f"segment ids {only_json[:10]} are in segments_info but not in the PNG")
    if known_categories is not None:
        known = set(known_categories)
        unknown = sorted({s.category_id for s in frame.segments} - known)
        if unknown:
            raise FormatMismatchError(where, f"unknown category ids {unknown}")
