"""Speed of the synthetic corpus generator at 256×512 and 1024×2048.

Run with ``make bench`` (or ``.venv/bin/python -m pytest -q -s -m benchmark
tests/benchmarks/bench_synth.py``). For one default-scenario video it measures, in one run:

* **scene** — building the scene once per video (street canvas, sky, sprites, tracks);
* **render** — :func:`operators.synth.render_frame` per frame: layers warped and
  composited, GT ids, exact GT flow;
* **segments** — ``segments_from_ids`` per frame (segments_info: area, bbox);
* **encode (baseline)** — what writing a frame costs anyway: RGB PNG + panoptic PNG + .flo
  bytes, no disk;

and prints seconds per frame and the ratio render / encode: below 1 means the generator is
not the bottleneck of ``tubeflow synth``, the file formats are.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from operators.formats.flo import encode_flo
from operators.formats.panoptic import encode_panoptic_png, encode_rgb_png, segments_from_ids
from operators.synth import SynthConfig, render_frame
from operators.synth.scene import build_scene


@pytest.mark.benchmark
@pytest.mark.parametrize("height, width, frames", [(256, 512, 10), (1024, 2048, 4)])
def test_synth_speed(height, width, frames):
    cfg = SynthConfig(videos=1, frames=frames, height=height, width=width, seed=0)
    start = time.perf_counter()
    scene = build_scene(cfg, 0)
    scene_s = time.perf_counter() - start
    render_s = segments_s = encode_s = 0.0
    for t in range(frames):
        start = time.perf_counter()
        rgb, ids, flow, _ = render_frame(scene, t)
        render_s += time.perf_counter() - start
        start = time.perf_counter()
        segments = segments_from_ids(ids, scene.category_of, scene.iscrowd_of)
        segments_s += time.perf_counter() - start
        start = time.perf_counter()
        sizes = len(encode_rgb_png(rgb)) + len(encode_panoptic_png(ids))
        sizes += len(encode_flo(flow)) if flow is not None else 0
        encode_s += time.perf_counter() - start
        assert segments and sizes > 0
    per = np.array([render_s, segments_s, encode_s]) / frames
    print(f"\nsynth {width}x{height}: scene {scene_s:.3f} s/video, render {per[0]:.3f} s/frame, "
          f"segments {per[1]:.3f} s/frame, encode (baseline) {per[2]:.3f} s/frame, "
          f"render/encode = {per[0] / per[2]:.2f}")
