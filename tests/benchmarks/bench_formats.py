"""Speed of the segments table and of video range reads, each against a baseline in the same run.

Run with ``make bench`` (or ``.venv/bin/python -m pytest -q -s -m benchmark
tests/benchmarks/bench_formats.py``).

* **segments table** at 1024×2048 with ~100 segments: ``frame_to_rows`` (one column-major
  copy of the id map, then a comparison per segment) against the plain way (a column-major
  boolean copy per segment), and ``rows_to_frame`` (paints inside each mask's bbox, checks
  overlap, area and bbox, re-encodes to validate the RLE) against plain full-frame painting
  with no checks; plus bytes per frame in Parquet against the panoptic PNG.
* **video range reads**: 8-frame chunks at scattered positions of a 300-frame 256×512 mp4,
  each from a freshly opened source (what a chunked decode task does), with verified seeks
  against sequential decoding from the start (the same source with seeking switched off).
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from operators.formats.panoptic import PanopticFrame, encode_panoptic_png, segments_from_ids
from operators.formats.segments_table import frame_to_batch, frame_to_rows, rows_to_frame, write_segments_table
from operators.video import ContainerSource, VideoWriter


def busy_frame(height: int, width: int, things: int, seed: int = 0) -> PanopticFrame:
    rng = np.random.default_rng(seed)
    ids = np.full((height, width), 1_000, np.int32)  # road
    ids[: height // 3] = 11_000  # sky
    ids[height // 3: height // 2] = 3_000  # building
    category = {1_000: 0, 11_000: 10, 3_000: 2}
    for k in range(1, things + 1):
        h, w = rng.integers(height // 40, height // 6), rng.integers(width // 80, width // 10)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        ids[y:y + h, x:x + w] = 14_000 + k
        category[14_000 + k] = 13
    present = set(np.unique(ids).tolist())
    return PanopticFrame(ids, segments_from_ids(ids, {i: c for i, c in category.items() if i in present}))


def median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


@pytest.mark.benchmark
def test_segments_table_speed(tmp_path):
    frame = busy_frame(1024, 2048, things=100)
    n = len(frame.segments)

    def plain_encode():
        return [mask_utils.encode(np.asfortranarray(frame.ids == s.id, dtype=np.uint8)) for s in frame.segments]

    ours_s, rows = median_time(lambda: frame_to_rows(frame, "v", 0, "img"), 3)
    plain_s, plain = median_time(plain_encode, 3)
    assert [r.mask["counts"] for r in rows] == [p["counts"] for p in plain]

    def plain_paint():
        ids = np.zeros(frame.ids.shape, np.int32)
        for row in rows:
            ids[mask_utils.decode(row.mask).astype(bool)] = row.track_id
        return ids

    back_s, rebuilt = median_time(lambda: rows_to_frame(rows), 3)
    plain_back_s, plain_ids = median_time(plain_paint, 3)
    np.testing.assert_array_equal(rebuilt.ids, frame.ids)
    np.testing.assert_array_equal(plain_ids, frame.ids)

    (parquet,) = write_segments_table(str(tmp_path), frame_to_batch(frame, "v", 0, "img"))
    parquet_bytes = os.path.getsize(parquet)
    png = encode_panoptic_png(frame.ids)
    print(f"\nsegments table at 1024x2048, {n} segments")
    print(f"  frame_to_rows  {ours_s * 1e3:7.1f} ms   plain per-segment copy {plain_s * 1e3:7.1f} ms   "
          f"ratio {plain_s / ours_s:.1f}x")
    print(f"  rows_to_frame  {back_s * 1e3:7.1f} ms   plain painting, no checks {plain_back_s * 1e3:7.1f} ms   "
          f"ratio {plain_back_s / back_s:.2f}x")
    print(f"  bytes/frame    Parquet {parquet_bytes:,}   panoptic PNG {len(png):,}   "
          f"ratio {parquet_bytes / len(png):.2f}")


@pytest.mark.benchmark
def test_video_range_read_speed(tmp_path):
    frames, height, width, chunk = 300, 256, 512, 8
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (height, width * 2, 3), dtype=np.uint8)
    uri = str(tmp_path / "clip.mp4")
    with VideoWriter(uri, 30.0) as writer:
        for t in range(frames):  # a panning camera: every frame differs
            writer.write(np.ascontiguousarray(background[:, t:t + width]))
    starts = [int(a) for a in np.linspace(20, frames - chunk, 8)]

    def chunks(seek: bool):
        out = []
        for a in starts:
            with ContainerSource(uri) as source:  # the same open (count probe) for both
                source.seeking = seek
                out.append(source.read(a, a + chunk))
        return out

    seek_s, by_seek = median_time(lambda: chunks(True), 3)
    seq_s, by_decoding = median_time(lambda: chunks(False), 3)
    for x, y in zip(by_seek, by_decoding):
        np.testing.assert_array_equal(x, y)
    with ContainerSource(uri) as source:
        open_kind = source.frame_count_by
    open_s, _ = median_time(lambda: ContainerSource(uri).close(), 5)
    print(f"\nvideo range reads: {len(starts)} chunks of {chunk} frames, {frames}-frame {width}x{height} mp4v, "
          f"fresh source per chunk")
    print(f"  verified seek  {seek_s / len(starts) * 1e3:7.1f} ms/chunk   sequential from frame 0 "
          f"{seq_s / len(starts) * 1e3:7.1f} ms/chunk   ratio {seq_s / seek_s:.1f}x")
    print(f"  open (count verified by {open_kind}) {open_s * 1e3:.1f} ms")
