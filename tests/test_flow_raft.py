"""RAFT: architecture as published (torchvision key names and parameter counts), checkpoint
loading, the correlation lookup against a direct computation, convex upsampling, the
flow-operator registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.errors import CorruptFileError, FormatMismatchError, InputError
from operators.flow import FLOW_BACKENDS, make_flow
from operators.flow.raft import RAFT, CorrelationPyramid, RaftFlow, convex_upsample, load_raft_checkpoint

# torchvision publishes these parameter counts for its raft_large / raft_small weights
# (``Raft_Large_Weights.meta["num_params"]``, ``Raft_Small_Weights.meta["num_params"]``).
PUBLISHED_PARAMS = {"large": 5_257_536, "small": 990_162}

# Key names and shapes of torchvision's module tree (torchvision/models/optical_flow/raft.py),
# written out by hand from that file: a checkpoint saved by torchvision has exactly these.
TORCHVISION_KEYS = {
    "large": {
        "feature_encoder.convnormrelu.0.weight": (64, 3, 7, 7),
        "feature_encoder.layer2.0.downsample.0.weight": (96, 64, 1, 1),
        "feature_encoder.conv.weight": (256, 128, 1, 1),
        "context_encoder.convnormrelu.1.running_var": (64,),
        "context_encoder.layer3.1.convnormrelu2.1.weight": (128,),
        "update_block.motion_encoder.convcorr1.0.weight": (256, 324, 1, 1),
        "update_block.motion_encoder.convcorr2.0.weight": (192, 256, 3, 3),
        "update_block.motion_encoder.convflow1.0.weight": (128, 2, 7, 7),
        "update_block.motion_encoder.conv.0.weight": (126, 256, 3, 3),
        "update_block.recurrent_block.convgru1.convz.weight": (128, 384, 1, 5),
        "update_block.recurrent_block.convgru2.convq.weight": (128, 384, 5, 1),
        "update_block.flow_head.conv2.weight": (2, 256, 3, 3),
        "mask_predictor.convrelu.0.weight": (256, 128, 3, 3),
        "mask_predictor.conv.weight": (576, 256, 1, 1),
    },
    "small": {
        "feature_encoder.layer1.0.convnormrelu1.0.weight": (8, 32, 1, 1),
        "feature_encoder.layer3.0.convnormrelu3.0.weight": (96, 24, 1, 1),
        "context_encoder.conv.weight": (160, 96, 1, 1),
        "update_block.motion_encoder.convcorr1.0.weight": (96, 196, 1, 1),
        "update_block.motion_encoder.conv.0.weight": (80, 128, 3, 3),
        "update_block.recurrent_block.convgru1.convr.weight": (96, 242, 3, 3),
        "update_block.flow_head.conv1.weight": (128, 96, 3, 3),
    },
}


@pytest.mark.parametrize("variant", ["large", "small"])
def test_architecture_matches_published_model(variant):
    model = RAFT(variant)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[variant]
    state = model.state_dict()
    for key, shape in TORCHVISION_KEYS[variant].items():
        assert tuple(state[key].shape) == shape, key
    assert not any("corr" in k and "convcorr" not in k for k in state)  # the pyramid has no parameters
    assert ("update_block.recurrent_block.convgru2.convz.weight" in state) == (variant == "large")
    assert any(k.startswith("mask_predictor") for k in state) == (variant == "large")


@pytest.mark.parametrize("variant", ["large", "small"])
def test_checkpoint_round_trip_and_variant_inference(tmp_path, variant):
    torch.manual_seed(0)
    source = RAFT(variant).eval()
    path = tmp_path / f"raft_{variant}.pth"
    torch.save(source.state_dict(), path)
    loaded = load_raft_checkpoint(str(path))
    assert loaded.variant == variant
    images = torch.rand(2, 1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = source(images[0], images[1], iterations=2)[-1]
        got = loaded(images[0], images[1], iterations=2)[-1]
    torch.testing.assert_close(got, expected)
    # DataParallel prefixes and {"model": …} wrappers are accepted
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    assert load_raft_checkpoint(str(wrapped)).variant == variant


def test_bad_checkpoints_name_the_file(tmp_path):
    state = RAFT("small").state_dict()
    state["update_block.flow_head.conv1.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(state, tmp_path / "shapes.pth")
    with pytest.raises(FormatMismatchError, match="shapes.pth.*RAFT-small.*flow_head.conv1.weight"):
        load_raft_checkpoint(str(tmp_path / "shapes.pth"))
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(FormatMismatchError, match="other.pth.*not a torchvision-format RAFT"):
        load_raft_checkpoint(str(tmp_path / "other.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CorruptFileError, match="junk.pth"):
        load_raft_checkpoint(str(tmp_path / "junk.pth"))
    with pytest.raises(InputError, match="absent.pth"):
        load_raft_checkpoint(str(tmp_path / "absent.pth"))


def test_correlation_lookup_equals_direct_dot_products():
    """At integer coordinates, level 0 of the lookup is ⟨f1(x), f2(x + d)⟩ / √C, with the
    window's first axis moving x (the channel order of the published checkpoints)."""
    gen = torch.Generator().manual_seed(1)
    f1, f2 = torch.randn(1, 5, 6, 7, generator=gen), torch.randn(1, 5, 6, 7, generator=gen)
    pyramid = CorrelationPyramid(f1, f2, levels=2, radius=1)
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    coords = torch.stack([xs, ys])[None]
    features = pyramid.lookup(coords)
    assert features.shape == (1, 2 * 9, 6, 7)
    y, x = 3, 4
    for a, dx in enumerate((-1, 0, 1)):
        for b, dy in enumerate((-1, 0, 1)):
            direct = float((f1[0, :, y, x] * f2[0, :, y + dy, x + dx]).sum() / 5 ** 0.5)
            assert features[0, a * 3 + b, y, x].item() == pytest.approx(direct, rel=1e-5)
    # outside frame 2 the correlation is zero (grid_sample zero padding)
    assert features[0, 0, 0, 0].item() == 0.0


def test_convex_upsampling():
    flow = torch.randn(1, 2, 3, 4)
    mask = torch.full((1, 9 * 64, 3, 4), -1e4)
    mask.view(1, 9, 8, 8, 3, 4)[:, 4] = 0.0  # all weight on the center neighbour
    up = convex_upsample(flow, mask)
    expected = 8 * flow.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    torch.testing.assert_close(up, expected)
    assert convex_upsample(flow, None).shape == (1, 2, 24, 32)


def test_raft_flow_operator_contract(tmp_path):
    torch.manual_seed(0)
    torch.save(RAFT("small").state_dict(), tmp_path / "small.pth")
    estimator = make_flow("raft", checkpoint=str(tmp_path / "small.pth"), iterations=2)
    rng = np.random.default_rng(0)
    current, previous = (rng.integers(0, 256, (60, 90, 3), dtype=np.uint8) for _ in range(2))
    flow = estimator(current, previous)  # 60×90 is padded to 64×96 and cropped back
    assert flow.shape == (60, 90, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    with pytest.raises(FormatMismatchError, match="small.pth.*uint8"):
        estimator(current.astype(np.float32), previous)
    assert isinstance(estimator, RaftFlow) and estimator.placement.device.type == "cpu"


def test_registry():
    assert FLOW_BACKENDS == ("dis", "raft")
    flow = make_flow("dis", preset="ultrafast")(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8))
    assert flow.shape == (32, 32, 2)
    with pytest.raises(ValueError, match="unknown flow backend"):
        make_flow("farneback")
