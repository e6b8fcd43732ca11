"""Built-in segmentation model: frames per second of the host, and the post-processing share.

Run with ``make bench`` (or ``.venv/bin/python -m pytest -q -s -m benchmark
tests/benchmarks/bench_segmentation.py``). Synthetic frames (default scenario) at 256×512
and 1024×2048 go through :class:`SegmentationHost` with the shipped weights, on this
machine's device: one pass per frame at batch size 1 without refinement (the baseline), with
flip test-time augmentation (two passes per frame), with flip and the half-cell shift (four
passes per frame), each of those with the guided refinement of the semantic map too (flip +
shift + refinement is the default), and the default at batch 4; the network forward alone is
timed too, so the post-processing share is visible.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from operators.segmentation.host import BUILTIN_WEIGHTS, SegmentationHost

SIZES = ((256, 512), (1024, 2048))
FRAMES = 8


def _frames(height: int, width: int) -> list[np.ndarray]:
    from operators.synth import SynthConfig, generate_video

    return [f.rgb for f in generate_video(SynthConfig(videos=1, frames=FRAMES, height=height, width=width, seed=3), 0)]


@pytest.mark.benchmark
@pytest.mark.skipif(not Path(BUILTIN_WEIGHTS).exists(), reason="no shipped weights (run `tubeflow train`)")
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_segmentation_speed(size):
    frames = _frames(*size)
    print(f"\n{size[0]}x{size[1]}, {FRAMES} frames, torch threads {torch.get_num_threads()}")
    rates = {}
    for name, batch_size, flip, shift, refine in (("batch 1, no augmentation", 1, False, False, False),
                                                  ("batch 1, refine", 1, False, False, True),
                                                  ("batch 1, flip", 1, True, False, False),
                                                  ("batch 1, flip + shift", 1, True, True, False),
                                                  ("batch 1, flip + shift + refine (default)", 1, True, True, True),
                                                  ("batch 4, flip + shift + refine", 4, True, True, True)):
        host = SegmentationHost("builtin", batch_size=batch_size, flip=flip, shift=shift, refine=refine)
        host.segment(frames[:batch_size])  # warm-up
        started = time.perf_counter()
        host.segment(frames)
        rates[name] = FRAMES / (time.perf_counter() - started)
    images = [torch.from_numpy(f[None]).permute(0, 3, 1, 2).float() / 255 for f in frames]
    with torch.inference_mode():
        host.model(images[0])
        started = time.perf_counter()
        for image in images:
            host.model(image)
        forward = FRAMES / (time.perf_counter() - started)
    baseline = rates["batch 1, no augmentation"]
    for name, rate in rates.items():
        print(f"  host, {name:40s} {rate:6.2f} frames/s ({rate / baseline:4.2f}× the baseline, batch 1 without "
              f"augmentation or refinement; {host.placement.device.type})")
    print(f"  network forward only, batch 1: {forward:6.2f} frames/s → post-processing ≈ "
          f"{max(0.0, 1 - baseline / forward):.0%} of the unaugmented host's time")
