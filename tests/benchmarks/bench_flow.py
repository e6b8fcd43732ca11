"""Optical flow: end-point error against the synthetic GT flow, and frames per second.

Run with ``make bench`` (or ``.venv/bin/python -m pytest -q -s -m benchmark
tests/benchmarks/bench_flow.py``). Frames come from :mod:`operators.synth` (default
scenario), whose GT flow is exact (current → previous, occlusions included). In one run:

* **zero flow** — the EPE baseline (how much the scene moves);
* **DIS** ``ultrafast`` / ``fast`` / ``medium`` (OpenCV) — EPE, frames/s, and the speed
  ratio against DIS-medium;
* **RAFT** large and small (torch, 12 iterations as published) — frames/s on this machine's
  device, 1 pair (RAFT on a CPU is slow). EPE only when a trained torchvision-format
  checkpoint is given in ``TUBEFLOW_RAFT_LARGE`` / ``TUBEFLOW_RAFT_SMALL`` (none can be
  downloaded here; with untrained weights an EPE would mean nothing). At 1024×2048 RAFT's
  all-pairs volume alone is (128·256)² floats = 4.3 GB, so RAFT runs there only when
  ``TUBEFLOW_RAFT_FULL=1`` (a GPU with enough memory).

EPE = mean over all pixels of ‖f − f_gt‖₂ (Baker et al., IJCV 2011).
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pytest
import torch

from operators.flow import make_flow

SIZES = ((512, 1024), (1024, 2048))
PAIRS = {(512, 1024): 4, (1024, 2048): 2}


def synthetic_pairs(height: int, width: int, pairs: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(current, previous, GT flow) for frames 1..pairs of one default-scenario video."""
    from operators.synth import SynthConfig, generate_video

    frames = list(generate_video(SynthConfig(videos=1, frames=pairs + 1, height=height, width=width, seed=5), 0))
    return [(frames[t].rgb, frames[t - 1].rgb, frames[t].flow) for t in range(1, pairs + 1)]


def end_point_error(flow: np.ndarray, gt: np.ndarray) -> float:
    return float(np.linalg.norm(flow - gt, axis=-1).mean())


def measure(estimator, pairs) -> tuple[float, float]:
    """(mean EPE, frames per second) of ``estimator`` over ``pairs`` (one warm-up call first)."""
    estimator(pairs[0][0], pairs[0][1])
    started = time.perf_counter()
    flows = [estimator(current, previous) for current, previous, _ in pairs]
    seconds = time.perf_counter() - started
    return float(np.mean([end_point_error(f, gt) for f, (_, _, gt) in zip(flows, pairs)])), len(pairs) / seconds


def raft_estimator(variant: str, directory: str):
    """RaftFlow with the checkpoint from the environment, else freshly initialised weights
    (speed only). Returns (estimator, trained?)."""
    from operators.flow.raft import RAFT

    checkpoint = os.environ.get(f"TUBEFLOW_RAFT_{variant.upper()}")
    trained = checkpoint is not None
    if not trained:
        checkpoint = os.path.join(directory, f"raft_{variant}_untrained.pth")
        torch.manual_seed(0)
        torch.save(RAFT(variant).state_dict(), checkpoint)
    return make_flow("raft", checkpoint=checkpoint, variant=variant, iterations=12), trained


@pytest.mark.benchmark
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_flow_epe_and_speed(size):
    height, width = size
    pairs = synthetic_pairs(height, width, PAIRS[size])
    zero_epe = float(np.mean([end_point_error(np.zeros_like(gt), gt) for _, _, gt in pairs]))
    print(f"\n{height}x{width}, {len(pairs)} pairs, torch threads {torch.get_num_threads()}")
    print(f"  zero flow          EPE {zero_epe:7.3f}")
    rows = {}
    for preset in ("ultrafast", "fast", "medium"):
        rows[preset] = measure(make_flow("dis", preset=preset), pairs)
    base_fps = rows["medium"][1]
    for preset, (epe, fps) in rows.items():
        print(f"  DIS {preset:10s}     EPE {epe:7.3f} ({epe / zero_epe:5.1%} of zero flow)   "
              f"{fps:7.2f} frames/s ({fps / base_fps:5.2f}× DIS-medium)")
        assert epe < zero_epe  # DIS must beat not moving at all on this corpus
    if size != SIZES[0] and os.environ.get("TUBEFLOW_RAFT_FULL") != "1":
        print("  RAFT: skipped at this size (all-pairs volume 4.3 GB; set TUBEFLOW_RAFT_FULL=1 on a large GPU)")
        return
    with tempfile.TemporaryDirectory() as directory:
        for variant in ("small", "large"):
            estimator, trained = raft_estimator(variant, directory)
            epe, fps = measure(estimator, pairs[:1])
            shown = f"EPE {epe:7.3f}" if trained else "EPE     n/a (no trained checkpoint)"
            print(f"  RAFT-{variant:6s} ({estimator.placement.device.type}) {shown}   {fps:7.3f} frames/s "
                  f"({fps / base_fps:6.3f}× DIS-medium)")
