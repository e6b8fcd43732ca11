"""Training the built-in model: seconds per optimisation step by forward-pass precision and
memory layout, against fp32 NCHW (the baseline) measured in the same run.

Run with ``make bench`` (or ``.venv/bin/python -m pytest -q -s -m benchmark
tests/benchmarks/bench_train.py``). The step is ``train_model``'s: a pair-ordered batch of 2
pairs of whole 256×512 frames, all losses (semantic CE at stride 2), backward, AdamW. The
shipped recipe uses bf16 autocast + channels-last; on a CPU without native bf16 (no
AVX-512 BF16 / AMX) bf16 may be slower than fp32 — this benchmark says which.
"""
from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from operators.training.loop import PairSampler, TrainConfig, load_training_videos, new_model, train_model

STEPS = 12  # timed steps per variant, after WARM_UP
WARM_UP = 3


def _seconds_per_step(config: TrainConfig, videos) -> float:
    """Median seconds per step over ``STEPS`` steps of ``train_model`` (timed by its reports)."""
    stamps: list[float] = []
    train_model(new_model(config, seed=0), PairSampler(videos, config, seed=0), config, torch.device("cpu"),
                report=lambda step, losses: stamps.append(time.perf_counter()))
    gaps = sorted(b - a for a, b in zip(stamps[WARM_UP:], stamps[WARM_UP + 1:]))
    return gaps[len(gaps) // 2]


@pytest.mark.benchmark
def test_training_step_speed():
    config = TrainConfig(videos_per_scenario=1, frames=6, steps=WARM_UP + STEPS + 1, log_every=1)
    videos = load_training_videos(config)
    print(f"\ntraining step, 2 pairs of 256x512 frames, torch threads {torch.get_num_threads()}")
    baseline = _seconds_per_step(replace(config, precision="fp32", channels_last=False), videos)
    print(f"  fp32, NCHW (baseline)        {baseline:.3f} s/step")
    for name, precision, channels_last in (("fp32, channels-last", "fp32", True),
                                           ("bf16, channels-last (recipe)", "bf16", True)):
        seconds = _seconds_per_step(replace(config, precision=precision, channels_last=channels_last), videos)
        print(f"  {name:28s} {seconds:.3f} s/step  {baseline / seconds:.2f}x the baseline")
