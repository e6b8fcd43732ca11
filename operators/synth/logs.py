"""Writing driving logs as fleets record them: MCAP (ROS 2, CDR) and ROS 1 bags.

:class:`LogWriter` puts camera frames on image topics (``sensor_msgs/CompressedImage`` as JPEG
or PNG, or raw ``sensor_msgs/Image`` rgb8/bgr8/mono8) and a scalar on a non-image topic, each
message with a header stamp (the capture time) and a log time (when the recorder received it).
:func:`log_schedule` gives the uneven timing of a real recorder: every camera has its own
phase, jitter and transport delay, and the log holds its messages in log-time order.

``tubeflow synth --format mcap`` and the tests use it; nothing here is needed to *read* logs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from operators import fs

_TIME = "int32 sec\nuint32 nanosec\n"
_HEADER = "builtin_interfaces/Time stamp\nstring frame_id\n"
_SEP = "=" * 80 + "\n"
# ROS 2 message definitions as MCAP's ros2msg schema encoding stores them (dependencies appended)
ROS2_SCHEMAS = {
    "sensor_msgs/msg/CompressedImage": "std_msgs/Header header\nstring format\nuint8[] data\n" + _SEP
    + "MSG: std_msgs/Header\n" + _HEADER + _SEP + "MSG: builtin_interfaces/Time\n" + _TIME,
    "sensor_msgs/msg/Image": "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
    "uint8 is_bigendian\nuint32 step\nuint8[] data\n" + _SEP + "MSG: std_msgs/Header\n" + _HEADER + _SEP
    + "MSG: builtin_interfaces/Time\n" + _TIME,
    "std_msgs/msg/Float64": "float64 data\n",
}


@dataclass(frozen=True)
class CameraStream:
    """A camera topic of a log: ``kind`` is ``jpeg`` / ``png`` (CompressedImage) or a raw
    ``sensor_msgs/Image`` encoding (``rgb8``, ``bgr8``, ``mono8``)."""

    topic: str
    kind: str = "jpeg"

    @property
    def message_type(self) -> str:
        return "sensor_msgs/msg/CompressedImage" if self.kind in ("jpeg", "png") else "sensor_msgs/msg/Image"


def _stamp(ns: int) -> dict:
    return {"sec": int(ns // 1_000_000_000), "nanosec": int(ns % 1_000_000_000)}


def camera_message(stream: CameraStream, rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera",
                   jpeg_quality: int = 95) -> dict:
    """The message (as a dict of fields) of one ``(H, W, 3) uint8`` RGB frame."""
    header = {"stamp": _stamp(stamp_ns), "frame_id": frame_id}
    if stream.kind in ("jpeg", "png"):
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if stream.kind == "jpeg" else []
        ok, buf = cv2.imencode(".jpg" if stream.kind == "jpeg" else ".png", np.ascontiguousarray(rgb[..., ::-1]),
                               params)
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode a {stream.kind}")
        return {"header": header, "format": stream.kind, "data": buf.tobytes()}
    if stream.kind == "rgb8":
        pixels = rgb
    elif stream.kind == "bgr8":
        pixels = rgb[..., ::-1]
    elif stream.kind == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        raise ValueError(f"unknown camera kind {stream.kind!r}")
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    return {"header": header, "height": height, "width": width, "encoding": stream.kind, "is_bigendian": 0,
            "step": pixels.strides[0], "data": pixels.tobytes()}


class LogWriter(fs.StagedFile):
    """Write a log (``.mcap`` or ``.bag`` by extension) to any fsspec URI, atomically.

    Messages may be added in any order; MCAP readers order by log time, and the bag writer
    indexes by time. Use as a context manager: leaving it through an exception discards the file.
    """

    def __init__(self, uri: str, *, chunk_size: int = 256 * 1024):
        name = str(uri).lower()
        self.format = "mcap" if name.endswith(".mcap") else "bag" if name.endswith(".bag") else None
        if self.format is None:
            raise ValueError(f"a log is a .mcap or .bag file, got {uri}")
        super().__init__(uri)
        self._path = self.local_path
        self._schemas: dict[str, object] = {}
        self._connections: dict[str, object] = {}
        if self.format == "mcap":
            from mcap_ros2.writer import Writer

            self._file = open(self._path, "wb")
            self._writer = Writer(self._file, chunk_size=chunk_size)
        else:
            from rosbags.rosbag1 import Writer
            from rosbags.typesys import Stores, get_typestore

            if os.path.exists(self._path):
                os.remove(self._path)  # rosbags refuses to overwrite
            self._typestore = get_typestore(Stores.ROS1_NOETIC)
            self._writer = Writer(self._path)
            self._writer.set_compression(Writer.CompressionFormat.LZ4)
            self._writer.open()

    def add_message(self, topic: str, message_type: str, fields: dict, log_time: int) -> None:
        """Any message of the schemas in :data:`ROS2_SCHEMAS`, given as a dict of its fields."""
        if self.format == "mcap":
            if message_type not in self._schemas:
                self._schemas[message_type] = self._writer.register_msgdef(message_type, ROS2_SCHEMAS[message_type])
            self._writer.write_message(topic, self._schemas[message_type], fields, log_time=log_time,
                                       publish_time=log_time)
            return
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(topic, message_type, typestore=self._typestore)
        self._writer.write(self._connections[topic], log_time,
                           self._typestore.serialize_ros1(self._ros1(message_type, fields), message_type))

    def _ros1(self, message_type: str, fields: dict):
        types = self._typestore.types
        if message_type == "std_msgs/msg/Float64":
            return types[message_type](data=float(fields["data"]))
        stamp = types["builtin_interfaces/msg/Time"](**fields["header"]["stamp"])
        header = types["std_msgs/msg/Header"](seq=0, stamp=stamp, frame_id=fields["header"]["frame_id"])
        data = np.frombuffer(fields["data"], np.uint8).copy()
        if message_type == "sensor_msgs/msg/CompressedImage":
            return types[message_type](header=header, format=fields["format"], data=data)
        return types[message_type](header=header, height=fields["height"], width=fields["width"],
                                   encoding=fields["encoding"], is_bigendian=fields["is_bigendian"],
                                   step=fields["step"], data=data)

    def add_frame(self, stream: CameraStream, rgb: np.ndarray, stamp_ns: int, log_time_ns: int) -> None:
        """One camera frame; ``stamp_ns`` 0 writes an unstamped header (readers use the log time)."""
        self.add_message(stream.topic, stream.message_type, camera_message(stream, rgb, stamp_ns), log_time_ns)

    def add_scalar(self, topic: str, value: float, log_time_ns: int) -> None:
        """A ``std_msgs/Float64`` on a non-image topic (a speed, a steering angle)."""
        self.add_message(topic, "std_msgs/msg/Float64", {"data": float(value)}, log_time_ns)

    def _finish(self) -> None:
        if self.format == "mcap":
            self._writer.finish()
            self._file.close()
        else:
            self._writer.close()

    def _release(self) -> None:
        if self.format == "mcap":
            self._file.close()
        else:
            self._writer.close()


def log_schedule(n_frames: int, fps: float, seed: int, start_ns: int, phase_ns: int = 0) -> list[tuple[int, int]]:
    """``(stamp, log time)`` in ns of ``n_frames`` frames of one camera: the nominal period with
    ±20 % jitter per frame (a rolling exposure and a busy driver), starting ``phase_ns`` after
    ``start_ns``, each received 2-15 ms after its capture. Stamps strictly increase."""
    rng = np.random.default_rng(seed)
    period = 1e9 / fps
    stamps = start_ns + phase_ns + np.round(np.arange(n_frames) * period
                                            + rng.uniform(-0.2, 0.2, n_frames) * period).astype(np.int64)
    delays = rng.integers(2_000_000, 15_000_000, n_frames)
    return [(int(s), int(s + d)) for s, d in zip(stamps, delays)]


FRONT, REAR, SPEED = (CameraStream("/camera/front/image_raw/compressed", "jpeg"),
                      CameraStream("/camera/rear/image_raw", "rgb8"), "/vehicle/speed")
LOG_START_NS = 1_700_000_000_000_000_000  # 2023-11-14 22:13:20 UTC: stamps look like a real drive's


def log_id(log_index: int) -> str:
    return f"log_{log_index:04d}"


def synth_log_frames(out: str, cfg, log_format: str, videos: list[dict], progress=None):
    """Write the videos of ``cfg`` as logs ``out/logs/log_KKKK.<mcap|bag>``, two videos per log
    (video 2k on the front camera as JPEG ``CompressedImage``, video 2k+1 on the rear camera as
    raw rgb8 ``Image``; an odd last video rides alone) with a ``std_msgs/Float64`` speed at 25 Hz
    and each camera on its own uneven clock (:func:`log_schedule`). Yields ``(VpsImage,
    PanopticFrame)`` of every frame for the GT, whose ``video_id`` is the camera stream's
    (``log_KKKK:/camera/front/image_raw/compressed``); appends each stream to ``videos``."""
    from operators.formats.flo import write_flo
    from operators.formats.vps_layout import VpsImage
    from operators.formats.panoptic import encode_rgb_png
    from operators.synth.config import frame_png_name
    from operators.synth.render import generate_video
    from operators.video.logs import log_video_id

    for k in range((cfg.videos + 1) // 2):
        name = log_id(k)
        rel = f"logs/{name}.{log_format}"
        cameras = [(FRONT, 2 * k)] + ([(REAR, 2 * k + 1)] if 2 * k + 1 < cfg.videos else [])
        start = LOG_START_NS + k * 3_600_000_000_000
        with LogWriter(fs.join(out, rel)) as log:
            for n in range(int(cfg.frames / cfg.fps * 25) + 1):
                log.add_scalar(SPEED, 8.0 + 0.1 * n, start + n * 40_000_000)
            for camera, v in cameras:
                schedule = log_schedule(cfg.frames, cfg.fps, seed=cfg.seed * 1000 + v, start_ns=start,
                                        phase_ns=17_000_000 * (v % 2))
                video_id, image_ids = log_video_id(name, camera.topic), []
                for frame, (stamp, log_time) in zip(generate_video(cfg, v), schedule):
                    log.add_frame(camera, frame.rgb, stamp, log_time)
                    fs.write_bytes(fs.join(out, "frames", frame_png_name(frame.image_id)), encode_rgb_png(frame.rgb))
                    if frame.flow is not None:
                        write_flo(fs.join(out, "flow", f"{frame.image_id}.flo"), frame.flow)
                    image_ids.append(frame.image_id)
                    yield VpsImage(frame.image_id, frame_png_name(frame.image_id), cfg.width, cfg.height, video_id,
                                   frame.frame_index), frame.panoptic
                videos.append({"video_id": video_id, "log": rel, "topic": camera.topic, "image_ids": image_ids,
                               "annotated_image_ids": [i for j, i in enumerate(image_ids) if j % cfg.annotate_every == 0]})
        if progress is not None:
            progress(f"log {name}: {len(cameras)} cameras x {cfg.frames} frames")
