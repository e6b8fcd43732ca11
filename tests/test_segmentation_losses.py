"""Training targets (Panoptic-DeepLab) and the SiamTrack temporal losses, on hand cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.formats.panoptic import PanopticFrame, SegmentInfo
from operators.training.losses import (LossWeights, at_stride, balanced_offset_loss, offset_loss, semantic_loss,
                                           temporal_losses, total_loss)
from operators.training.targets import IGNORE, batch_targets, frame_targets


def _frame():
    """Road (1000) everywhere, a car 14001 at rows 2..5 × cols 4..9, a crowd of persons
    12000 at rows 8..9 × cols 0..3, VOID at the last row."""
    ids = np.full((12, 16), 1000, np.int32)
    ids[2:6, 4:10] = 14001
    ids[8:10, 0:4] = 12000
    ids[11] = 0
    segments = [SegmentInfo(1000, 0), SegmentInfo(14001, 13), SegmentInfo(12000, 11, iscrowd=1)]
    return PanopticFrame(ids, segments)


def test_targets_by_hand():
    t = frame_targets(_frame(), thing_ids={11, 13}, sigma=2.0)
    assert t["semantic"][0, 0] == 0 and t["semantic"][3, 5] == 13 and t["semantic"][8, 1] == 11
    assert (t["semantic"][11] == IGNORE).all()
    cy, cx = 3.5, 6.5  # center of mass of rows 2..5, cols 4..9
    assert t["offset"][0, 2, 4] == pytest.approx(cy - 2) and t["offset"][1, 2, 4] == pytest.approx(cx - 4)
    assert t["offset_weight"][0].sum() == 24 and t["offset_weight"][0, 8, 1] == 0  # crowd: no offset
    assert t["center_weight"][0, 8, 1] == 0 and t["center_weight"][0, 0, 0] == 1
    expected = np.exp(-((3 - cy) ** 2 + (6 - cx) ** 2) / (2 * 2.0 ** 2))
    assert t["center"][0, 3, 6] == pytest.approx(expected, rel=1e-5)
    assert t["center"].max() <= 1.0 and t["center"][0, 11, 15] == pytest.approx(0.0, abs=1e-6)
    # small instances (< 64² px) are marked for the semantic loss's weighting; stuff is not
    assert t["small_instance"][3, 5] == 1 and t["small_instance"][8, 1] == 1 and t["small_instance"][0, 0] == 0
    # a threshold scaled to the frame: the car (24 px) is not small under 16 px, the crowd (8 px) is
    scaled = frame_targets(_frame(), thing_ids={11, 13}, sigma=2.0, small_area=16)["small_instance"]
    assert scaled[3, 5] == 0 and scaled[8, 1] == 1


def test_targets_at_the_heads_stride_are_the_cell_centre_pixels():
    targets = batch_targets([_frame()], {11, 13}, sigma=2.0)
    cells = at_stride(targets, (3, 4))  # stride 4: pixels (2 + 4i, 2 + 4j)
    assert cells.semantic.shape == (1, 3, 4) and cells.offset.shape == (1, 2, 3, 4)
    assert torch.equal(cells.semantic[0], targets.semantic[0, 2::4, 2::4])
    assert cells.semantic[0, 0, 1] == 13 and cells.semantic[0, 2, 0] == 0  # pixel (2, 6): car; (10, 2): road
    assert cells.offset[0, :, 0, 1].tolist() == pytest.approx([3.5 - 2, 6.5 - 6])  # offsets stay in input pixels
    assert torch.equal(cells.segment_ids, targets.segment_ids)  # the temporal losses sample ids themselves
    assert at_stride(targets, (12, 16)) is targets


def test_small_instance_weight_scales_their_pixels_ce():
    logits, target = torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 1]]])
    small = torch.tensor([[[0.0, 1.0]]])
    plain = semantic_loss(logits, target, hard_ratio=1.0)
    weighted = semantic_loss(logits, target, hard_ratio=1.0, weight=1 + 2 * small)
    assert weighted.item() == pytest.approx(2 * plain.item())  # mean of (1·log 2, 3·log 2)


def test_bootstrapped_ce_and_offset_loss():
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 0, 0, :2] = 10.0  # two easy pixels of class 0
    target = torch.tensor([[[0, 0, 1, IGNORE]]])
    hard = semantic_loss(logits, target, hard_ratio=0.34)  # top 1 of 3 valid pixels: the class-1 one
    assert hard.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[..., 2:3], target[..., 2:3]).item())
    pred, tgt = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    weight = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert offset_loss(pred, tgt, weight).item() == pytest.approx(2.0)


def test_balanced_offset_loss_counts_every_instance_the_same():
    """A 1-pixel instance off by 4 px (|dy| + |dx|) and a 3-pixel instance exact: the pixel mean
    is 4 / 4 = 1, the instance mean (4 + 0) / 2 = 2. The second frame has the same GT ids (a
    pair of one video) but is its own instance: off by 1 px on its 4 pixels."""
    pred, target = torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 2, 2)
    ids = torch.tensor([[[7, 8], [8, 8]], [[7, 7], [7, 7]]])
    target[0, :, 0, 0] = torch.tensor([1.0, -3.0])  # instance 7 of frame 0
    target[1, 0] = 1.0  # instance 7 of frame 1: every pixel off by 1
    weight = torch.ones(2, 1, 2, 2)
    assert balanced_offset_loss(pred[:1], target[:1], weight[:1], ids[:1]).item() == pytest.approx(2.0)
    assert offset_loss(pred[:1], target[:1], weight[:1]).item() == pytest.approx(1.0)
    assert balanced_offset_loss(pred, target, weight, ids).item() == pytest.approx((4 + 0 + 1) / 3)
    weight[0, 0, 0, 0] = 0.0  # a pixel without an offset target (crowd, stuff) is left out
    assert balanced_offset_loss(pred[:1], target[:1], weight[:1], ids[:1]).item() == pytest.approx(0.0)


def test_semantic_loss_on_upsampled_logits_sees_thin_stuff():
    """A 1-pixel-wide pole at column 5 falls between the stride-4 sample columns (2, 6, …), so
    the loss at the heads' stride never sees it; on logits upsampled ×2 (columns 1, 3, 5, …) it does."""
    ids = np.full((8, 16), 1000, np.int32)
    ids[:, 5] = 6000  # pole (class 5)
    frame = PanopticFrame(ids, [SegmentInfo(1000, 0), SegmentInfo(6000, 5)])
    targets = batch_targets([frame, frame], thing_ids={11, 13})
    outputs = {"semantic": torch.zeros(2, 19, 2, 4), "center": torch.zeros(2, 1, 2, 4),
               "offset": torch.zeros(2, 2, 2, 4), "embedding": torch.ones(2, 4, 8, 16)}
    outputs["semantic"][:, 0] = 5.0  # confident road everywhere
    at_heads = total_loss(outputs, targets, LossWeights(hard_pixel_ratio=1.0, semantic_upsample=1))[1]["semantic"]
    upsampled = total_loss(outputs, targets, LossWeights(hard_pixel_ratio=1.0, semantic_upsample=2))[1]["semantic"]
    road_ce = torch.nn.functional.cross_entropy(outputs["semantic"][:1, :, :1, :1], torch.zeros(1, 1, 1, dtype=torch.long))
    assert at_heads == pytest.approx(road_ce.item(), rel=1e-5)  # only road pixels sampled
    assert upsampled > 2 * at_heads  # the pole's pixels (CE ≈ 5) are now in the loss
    with pytest.raises(ValueError, match="semantic_upsample"):
        LossWeights(semantic_upsample=0)


def _pair_embeddings(good: bool):
    """Two frames of 3 segments (ids 5, 6, 7); in the second frame the segments moved.
    ``good``: each id has its own embedding direction in both frames; else frame 2 swaps 5 ↔ 6."""
    ids = torch.zeros(2, 8, 12, dtype=torch.long)
    ids[0, :, :4], ids[0, :, 4:8], ids[0, :, 8:] = 5, 6, 7
    ids[1, :, :3], ids[1, :, 3:9], ids[1, :, 9:] = 5, 6, 7
    direction = {5: 0, 6: 1, 7: 2}
    swapped = {5: 1, 6: 0, 7: 2}
    emb = torch.zeros(2, 3, 8, 12)
    for b, mapping in ((0, direction), (1, direction if good else swapped)):
        for sid, d in mapping.items():
            emb[b, d][ids[b] == sid] = 1.0
    return emb, ids


def test_contrastive_and_tube_dice_reward_consistent_embeddings():
    good_con, good_dice = temporal_losses(*_pair_embeddings(True), temperature=0.1)
    bad_con, bad_dice = temporal_losses(*_pair_embeddings(False), temperature=0.1)
    # perfect embeddings: InfoNCE = log(1 + 2·e^{-10}) ≈ 0, propagated masks ≈ GT masks
    assert good_con.item() == pytest.approx(np.log(1 + 2 * np.exp(-10)), abs=1e-4)
    assert good_dice.item() < 1e-3
    assert bad_con.item() > 5 and bad_dice.item() > 0.5


@pytest.mark.parametrize("weights", [LossWeights(), LossWeights(balanced_offsets=True, semantic_upsample=1)],
                         ids=["default", "balanced-offsets-ce-at-heads"])
def test_total_loss_backpropagates_to_every_head(weights):
    torch.manual_seed(0)
    from operators.segmentation.model import PanopticNet, PanopticNetConfig

    model = PanopticNet(PanopticNetConfig(widths=(8, 8, 16, 16), decoder_channels=8, head_channels=8))
    frame = _frame()
    big = PanopticFrame(np.kron(frame.ids, np.ones((4, 4), np.int32))[:32, :64], frame.segments)
    targets = batch_targets([big, big], {11, 13})
    loss, terms = total_loss(model(torch.rand(2, 3, 32, 64)), targets, weights)
    loss.backward()
    assert set(terms) == {"semantic", "center", "offset", "contrastive", "tube_dice"}
    for name in ("semantic_head", "center_head", "offset_head", "embedding_head"):
        assert getattr(model, name)[1].weight.grad.abs().sum() > 0, name
