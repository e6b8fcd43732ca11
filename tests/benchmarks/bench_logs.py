"""Decoding a JPEG camera topic from an MCAP log against decoding the same frames from an mp4.

Run with ``make bench`` (or ``.venv/bin/python -m pytest -q -s -m benchmark
tests/benchmarks/bench_logs.py``).

The same 240 synthetic 512×1024 frames (a driving scene, ``operators.synth``) are written once
as the front camera of an MCAP log (``sensor_msgs/CompressedImage``, JPEG quality 90, zstd
chunks of 1 MB, beside a rear camera and a speed topic, as ``tubeflow synth --format mcap``
lays logs out) and once as an mp4 (OpenCV's mp4v). Two access patterns, what the label
pipeline does, each from a freshly opened source and interleaved over rounds (medians):

* **whole topic**: every frame in order;
* **chunks**: 16-frame chunks at scattered positions, each from a freshly opened source (a
  decode task of the pipeline), so the log's index lookup and the mp4's verified seek count.

Printed: frames/s of each, the ratio log / mp4 (above 1: the log is faster), and the share of
the log's own work (index, chunk decompression, CDR; the same read without JPEG decoding) in
its whole-topic time — the rest is OpenCV's JPEG decoder.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from operators.synth import SynthConfig, generate_video
from operators.synth.logs import FRONT, REAR, CameraStream, LogWriter, log_schedule
from operators.video import VideoWriter, open_video, stream_uri

FRAMES, HEIGHT, WIDTH, CHUNK = 240, 512, 1024, 16


def write_sources(tmp_path) -> tuple[str, str]:
    cfg = SynthConfig(videos=1, frames=FRAMES, height=HEIGHT, width=WIDTH, seed=3)
    log_uri, mp4_uri = str(tmp_path / "drive.mcap"), str(tmp_path / "drive.mp4")
    front = CameraStream(FRONT.topic, "jpeg")
    schedule = log_schedule(FRAMES, cfg.fps, seed=1, start_ns=1_700_000_000_000_000_000)
    with LogWriter(log_uri, chunk_size=1 << 20) as log, VideoWriter(mp4_uri, cfg.fps) as mp4:
        for frame, (stamp, log_time) in zip(generate_video(cfg, 0), schedule):
            log.add_frame(front, frame.rgb, stamp, log_time)
            if frame.frame_index % 4 == 0:  # a second camera at a quarter of the rate
                log.add_frame(CameraStream(REAR.topic, "jpeg"), frame.rgb[::2, ::2], stamp + 3_000_000,
                              log_time + 3_000_000)
            log.add_scalar("/vehicle/speed", 8.0, log_time + 1)
            mp4.write(frame.rgb)
    return stream_uri(log_uri, front.topic), mp4_uri


def whole(uri: str) -> int:
    with open_video(uri) as source:
        return sum(1 for _ in source.iter_frames())


def messages_only(uri: str) -> int:
    """The log's part of the work: index, chunk decompression and CDR decoding, no JPEG decoding."""
    with open_video(uri) as source:
        return sum(1 for _ in source.log.messages(source.topic, 0, len(source)))


def chunks(uri: str, starts: list[int]) -> int:
    n = 0
    for a in starts:
        with open_video(uri) as source:
            n += len(source.read(a, a + CHUNK))
    return n


@pytest.mark.benchmark
def test_mcap_jpeg_topic_against_mp4(tmp_path):
    log, mp4 = write_sources(tmp_path)
    starts = [int(a) for a in np.random.default_rng(0).permutation(np.arange(0, FRAMES - CHUNK, CHUNK))[:8]]
    results = {key: [] for key in ("log whole", "mp4 whole", "log chunks", "mp4 chunks", "log messages")}
    for _ in range(3):
        for name, fn in (("log whole", lambda: whole(log)), ("mp4 whole", lambda: whole(mp4)),
                         ("log messages", lambda: messages_only(log)),
                         ("log chunks", lambda: chunks(log, starts)), ("mp4 chunks", lambda: chunks(mp4, starts))):
            start = time.perf_counter()
            n = fn()
            results[name].append(n / (time.perf_counter() - start))
    fps = {k: statistics.median(v) for k, v in results.items()}
    for key, value in fps.items():
        print(f"{key:>11}: {value:7.1f} frames/s")
    print(f"whole topic: log / mp4 = {fps['log whole'] / fps['mp4 whole']:.2f}x; "
          f"{CHUNK}-frame chunks: log / mp4 = {fps['log chunks'] / fps['mp4 chunks']:.2f}x; "
          f"share of the log's own work (index, zstd, CDR) in the whole-topic time: "
          f"{fps['log whole'] / fps['log messages']:.0%}")
    with open_video(log) as a, open_video(mp4) as b:
        assert a.meta.frame_count == b.meta.frame_count == FRAMES
        assert np.abs(a.read(100, 101).astype(int) - b.read(100, 101)).mean() < 12  # the same frames, two codecs
