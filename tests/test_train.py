"""Training the built-in model: the loss goes down on a tiny synthetic corpus, and
``tubeflow train`` (Ray Train TorchTrainer, one CPU worker) writes loadable weights."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from operators.segmentation.model import PanopticNetConfig
from operators.training.loop import (PairSampler, TrainConfig, load_training_videos, new_model,
                                             photometric_jitter, poly_lr, train_model)

TINY_MODEL = PanopticNetConfig(widths=(16, 16, 32, 32), decoder_channels=16, head_channels=16, embedding_dim=8)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_loss_decreases_on_a_tiny_corpus(precision):
    torch.set_num_threads(2)
    config = TrainConfig(videos_per_scenario=1, frames=4, height=64, width=128, scenarios=("default",), steps=30,
                         batch_pairs=2, crop=(64, 128), lr=3e-3, log_every=1, model=TINY_MODEL, precision=precision)
    videos = load_training_videos(config)
    assert len(videos) == 1 and len(videos[0]) == 4
    history = train_model(new_model(config, seed=0), PairSampler(videos, config, seed=0), config, torch.device("cpu"))
    losses = [h["loss"] for h in history]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.6 * first, (first, last)
    for term in ("semantic", "contrastive"):
        assert np.mean([h[term] for h in history[-5:]]) < np.mean([h[term] for h in history[:5]]), term


@pytest.mark.slow  # Ray Train starts a controller and a worker group: ~40 s on 2 cores
def test_train_command_on_ray_writes_loadable_weights(tmp_path, ray_local):
    from jobs.cli import main
    from operators.segmentation.host import SegmentationHost

    out = tmp_path / "weights.pt"
    code = main(["train", "--out", str(out), "--steps", "2", "--batch-pairs", "1", "--videos-per-scenario", "1",
                 "--frames", "3", "--height", "64", "--width", "128", "--crop", "64", "128",
                 "--scenarios", "default", "--log-every", "1"])
    assert code == 0
    log = json.loads((tmp_path / "weights.pt.json").read_text())
    assert log["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert [h["step"] for h in log["history"]] == [1, 2] and log["workers"] == 1
    host = SegmentationHost("builtin", str(out))
    assert host.model_sha256 == log["sha256"]
    (result,) = host.segment([np.zeros((64, 128, 3), np.uint8)])
    assert result.ids.shape == (64, 128)


def test_an_unknown_training_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")  # fp16 would need loss scaling; bf16 does not


def test_training_is_deterministic_for_a_seed():
    """Same config and seeds → bit-identical weights (what makes the shipped weights reproducible)."""
    torch.set_num_threads(2)
    config = TrainConfig(videos_per_scenario=1, frames=3, height=64, width=128, scenarios=("default",), steps=3,
                         batch_pairs=1, crop=(64, 128), log_every=1, model=TINY_MODEL)
    videos = load_training_videos(config)
    states = []
    for _ in range(2):
        model = new_model(config, seed=0)
        train_model(model, PairSampler(videos, config, seed=0), config, torch.device("cpu"))
        states.append(model.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_photometric_jitter_is_shared_within_a_pair():
    """Frames t (first half) and t' (second half) of a pair get the same colour transform, so
    the same pixels stay the same colour; different pairs get different transforms."""
    rng = np.random.default_rng(0)
    base = torch.rand(2, 3, 8, 16)
    images = torch.cat([base, base])  # pairs (0, 2) and (1, 3): identical frames
    out = photometric_jitter(images, 0.3, rng)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out[0], out[2])
    torch.testing.assert_close(out[1], out[3])
    assert not torch.allclose(out[0], base[0], atol=1e-3)
    same = photometric_jitter(torch.cat([base[:1]] * 4), 0.3, np.random.default_rng(1))
    assert not torch.allclose(same[0], same[1], atol=1e-3)  # pair 0 and pair 1 differ


def test_poly_schedule_with_warm_up():
    assert poly_lr(1.0, 0, 100, warmup=10) == pytest.approx(0.1)
    assert poly_lr(1.0, 9, 100, warmup=10) == pytest.approx(1.0)
    assert poly_lr(1.0, 10, 100, warmup=10) == pytest.approx((1 - 10 / 100) ** 0.9)
    assert poly_lr(1.0, 99, 100) == pytest.approx(0.01 ** 0.9)


def test_train_command_line_reaches_the_config():
    import argparse

    from jobs.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = config_from_args(parser.parse_args([]))
    assert defaults == TrainConfig()  # the command's defaults are the recipe's
    # every value below differs from the recipe's default, so each flag's wiring is tested
    config = config_from_args(parser.parse_args(["--precision", "fp32", "--balanced-offsets", "--semantic-upsample", "1",
                                                 "--small-instance-weight", "2", "--small-instance-area", "1024",
                                                 "--steps", "7", "--widths", "16", "32", "48", "64",
                                                 "--decoder-channels", "24",
                                                 "--semantic-stride", "2", "--fine-channels", "16"]))
    assert (config.model.semantic_stride, config.model.fine_channels) == (2, 16)
    assert (config.model.widths, config.model.decoder_channels) == ((16, 32, 48, 64), 24)
    assert (config.precision, config.steps, config.small_instance_area) == ("fp32", 7, 1024)
    assert (config.losses.balanced_offsets, config.losses.semantic_upsample, config.losses.small_instance) == (True, 1, 2.0)
