"""ROS camera messages → RGB frames: ``sensor_msgs/CompressedImage`` (JPEG, PNG) and
``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8, the 16-bit rgb16/bgr16/rgba16/bgra16/
mono16/16UC1, 8UC1, 8UC3, bayer_*8, yuv422/uyvy, yuyv), whatever library decoded the message (``mcap-ros2-support`` gives ``bytes``,
``rosbags`` numpy arrays).

Anything else (``compressedDepth``, 32-bit float images, a payload that does not decode) raises
:class:`~operators.errors.InputError` naming ``where`` — the log, the topic and the message.
"""
from __future__ import annotations

import cv2
import numpy as np

from operators.errors import CorruptFileError, FormatMismatchError

COMPRESSED_TYPES = ("sensor_msgs/msg/CompressedImage", "sensor_msgs/CompressedImage")
RAW_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/Image")
CAMERA_TYPES = COMPRESSED_TYPES + RAW_TYPES

# encoding → (channels, dtype, OpenCV conversion to RGB or None when already RGB)
_RAW = {
    "rgb8": (3, np.uint8, None), "bgr8": (3, np.uint8, cv2.COLOR_BGR2RGB), "8uc3": (3, np.uint8, cv2.COLOR_BGR2RGB),
    "rgba8": (4, np.uint8, cv2.COLOR_RGBA2RGB), "bgra8": (4, np.uint8, cv2.COLOR_BGRA2RGB),
    "mono8": (1, np.uint8, cv2.COLOR_GRAY2RGB), "8uc1": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "mono16": (1, np.uint16, cv2.COLOR_GRAY2RGB), "16uc1": (1, np.uint16, cv2.COLOR_GRAY2RGB),
    "rgb16": (3, np.uint16, None), "bgr16": (3, np.uint16, cv2.COLOR_BGR2RGB),
    "rgba16": (4, np.uint16, cv2.COLOR_RGBA2RGB), "bgra16": (4, np.uint16, cv2.COLOR_BGRA2RGB),
    # Bayer patterns are named by the sensor's first two rows; OpenCV names them by the second
    # row's 2nd and 3rd pixels, hence the apparent swap (the same table as ROS' cv_bridge).
    "bayer_rggb8": (1, np.uint8, cv2.COLOR_BayerBG2RGB), "bayer_bggr8": (1, np.uint8, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, np.uint8, cv2.COLOR_BayerGR2RGB), "bayer_grbg8": (1, np.uint8, cv2.COLOR_BayerGB2RGB),
    "yuv422": (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY), "uyvy": (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY),
    "yuyv": (2, np.uint8, cv2.COLOR_YUV2RGB_YUYV), "yuv422_yuy2": (2, np.uint8, cv2.COLOR_YUV2RGB_YUYV),
}
RAW_ENCODINGS = tuple(sorted(_RAW))


def is_camera_type(message_type: str) -> bool:
    return message_type in CAMERA_TYPES


def header_stamp_ns(message) -> int | None:
    """The message header's stamp in ns, or None when it is zero (a driver that does not stamp)."""
    stamp = message.header.stamp
    ns = int(stamp.sec) * 1_000_000_000 + int(getattr(stamp, "nanosec", getattr(stamp, "nsec", 0)))
    return ns or None


def _payload(data) -> np.ndarray:
    return np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else \
        np.ascontiguousarray(np.asarray(data, np.uint8)).reshape(-1)


def decode_compressed(message, where: str) -> np.ndarray:
    """A ``CompressedImage`` → ``(H, W, 3) uint8`` RGB. The format string (``jpeg``, ``png``,
    ``bgr8; jpeg compressed bgr8``) is checked, then the bytes' own signature decides."""
    form = str(message.format).lower()
    if "compresseddepth" in form:
        raise FormatMismatchError(where, f"unsupported image format {message.format!r} (depth images are not "
                                         "camera frames)")
    buf = _payload(message.data)
    head = bytes(buf[:8])
    if not (head.startswith(b"\xff\xd8") or head.startswith(b"\x89PNG")):
        if any(k in form for k in ("jpeg", "jpg", "png")) or not form:
            raise CorruptFileError(where, f"{message.format or 'image'} payload of {buf.size} bytes is not a "
                                          "JPEG or PNG (corrupt message)")
        raise FormatMismatchError(where, f"unsupported image format {message.format!r}: JPEG and PNG are read")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise CorruptFileError(where, f"the {message.format or 'image'} payload of {buf.size} bytes does not "
                                      "decode (corrupt message)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_raw(message, where: str) -> np.ndarray:
    """An ``Image`` → ``(H, W, 3) uint8`` RGB; 16-bit images keep their top 8 bits."""
    encoding = str(message.encoding).lower()
    if encoding not in _RAW:
        raise FormatMismatchError(where, f"unsupported image encoding {message.encoding!r}; supported: "
                                         f"{', '.join(RAW_ENCODINGS)}")
    channels, dtype, conversion = _RAW[encoding]
    height, width, step = int(message.height), int(message.width), int(message.step)
    itemsize = np.dtype(dtype).itemsize
    row = width * channels * itemsize
    buf = _payload(message.data)
    if height <= 0 or width <= 0 or step < row or buf.size < step * (height - 1) + row:
        raise CorruptFileError(where, f"{message.encoding} image {width}x{height} (step {step}) needs "
                                      f"{step * height} bytes, the message holds {buf.size} (corrupt message)")
    rows = np.lib.stride_tricks.as_strided(buf, (height, row), (step, 1)) if buf.size >= step * height else \
        np.stack([buf[r * step:r * step + row] for r in range(height)])
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if message.is_bigendian else "<"))
    pixels = pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)
    if itemsize == 2:
        pixels = (pixels.astype(np.uint16) >> 8).astype(np.uint8)
    if channels == 2:  # packed YUV 4:2:2: OpenCV wants (H, W, 2)
        pixels = pixels.reshape(height, width, 2)
    rgb = pixels if conversion is None else cv2.cvtColor(pixels, conversion)
    return np.ascontiguousarray(rgb)


def decode_camera_message(message_type: str, message, where: str) -> np.ndarray:
    """Any camera message → ``(H, W, 3) uint8`` RGB (see the module doc)."""
    if message_type in COMPRESSED_TYPES:
        return decode_compressed(message, where)
    if message_type in RAW_TYPES:
        return decode_raw(message, where)
    raise FormatMismatchError(where, f"{message_type} is not a camera message type")
