"""Panoptic post-processing against hand-built heads and slow per-pixel references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.formats.panoptic import PanopticFrame, SegmentInfo
from operators.segmentation.model import OUTPUT_KEYS, PanopticNet, PanopticNetConfig
from operators.segmentation.postprocess import (PostprocessConfig, find_centers, group_pixels, mask_pool,
                                                panoptic_postprocess)

THINGS = (11, 12, 13)  # person, rider, car
NUM_CLASSES = 19


def _heads(height=32, width=48, dim=4):
    """Road (0) on the left, sky (10) on the right, two cars (13) in the middle band.

    Car A: rows 8..15, cols 10..19, center (11, 14). Car B: rows 8..15, cols 24..33, center (11, 28).
    Offsets point each car pixel to its car's center. The embedding is 1 on channel 0 for
    car A, channel 1 for car B, channel 2 for stuff.
    """
    semantic = torch.full((1, NUM_CLASSES, height, width), -10.0)
    semantic[0, 0, :, : width // 2] = 10.0
    semantic[0, 10, :, width // 2:] = 10.0
    semantic[0, :, 8:16, 10:20] = -10.0
    semantic[0, 13, 8:16, 10:20] = 10.0
    semantic[0, :, 8:16, 24:34] = -10.0
    semantic[0, 13, 8:16, 24:34] = 10.0
    center = torch.zeros(1, 1, height, width)
    center[0, 0, 11, 14] = 0.9
    center[0, 0, 11, 28] = 0.7
    center[0, 0, 11, 15] = 0.5  # suppressed by NMS (next to the 0.9 peak)
    offset = torch.zeros(1, 2, height, width)
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    for (y0, y1, x0, x1), (cy, cx) in (((8, 16, 10, 20), (11, 14)), ((8, 16, 24, 34), (11, 28))):
        offset[0, 0, y0:y1, x0:x1] = cy - ys[y0:y1, x0:x1]
        offset[0, 1, y0:y1, x0:x1] = cx - xs[y0:y1, x0:x1]
    embedding = torch.zeros(1, dim, height, width)
    embedding[0, 2] = 1.0
    embedding[0, :, 8:16, 10:20] = 0
    embedding[0, 0, 8:16, 10:20] = 3.0
    embedding[0, :, 8:16, 24:34] = 0
    embedding[0, 1, 8:16, 24:34] = 2.0
    return {"semantic": semantic, "center": center, "offset": offset, "embedding": embedding}


def test_two_cars_and_two_stuff_regions_by_hand():
    config = PostprocessConfig(center_threshold=0.1, nms_kernel=5, stuff_area=4, thing_area=4)
    (frame,) = panoptic_postprocess(_heads(), (32, 48), THINGS, config)
    by_id = {s.id: s for s in frame.segments}
    assert sorted(by_id) == [1000, 11000, 14001, 14002]  # road, sky, car 1 (best center), car 2
    assert by_id[14001].bbox == (10, 8, 10, 8) and by_id[14001].area == 80
    assert by_id[14002].bbox == (24, 8, 10, 8) and by_id[14002].area == 80
    assert by_id[1000].area == 24 * 32 - 80 and by_id[11000].area == 24 * 32 - 80
    assert (frame.ids[8:16, 10:20] == 14001).all() and (frame.ids[8:16, 24:34] == 14002).all()
    assert by_id[14001].score == pytest.approx(0.9, abs=1e-4)  # center score × class probability ≈ 1
    assert by_id[14002].score == pytest.approx(0.7, abs=1e-4)
    rows = {s.id: frame.embeddings[i] for i, s in enumerate(frame.segments)}
    np.testing.assert_allclose(rows[14001], [1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(rows[14002], [0, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(rows[1000], [0, 0, 1, 0], atol=1e-6)
    assert frame.to_panoptic_frame().segments == frame.segments


def test_thing_groups_split_one_center_into_a_human_and_a_vehicle():
    """Car A's right 3 columns are person pixels whose offsets point at car A's center (a
    rider on its bicycle: one blob, one peak). One vote per center makes it one car of 80 px;
    with the human / vehicle groups it is a car of 56 px and a person of 24 px."""
    heads = _heads()
    heads["semantic"][0, :, 8:16, 17:20] = -10.0
    heads["semantic"][0, 11, 8:16, 17:20] = 10.0  # person
    config = PostprocessConfig(center_threshold=0.1, nms_kernel=5, stuff_area=4, thing_area=4)
    (single,) = panoptic_postprocess(heads, (32, 48), THINGS, config)
    assert {s.id: s.area for s in single.segments if s.category_id != 0 and s.category_id != 10} == {14001: 80, 14002: 80}
    (split,) = panoptic_postprocess(heads, (32, 48), THINGS, config, thing_groups=((11, 12), (13,)))
    by_id = {s.id: s for s in split.segments}
    assert {i: s.area for i, s in by_id.items() if s.category_id in THINGS} == {14001: 56, 14002: 80, 12001: 24}
    assert (split.ids[8:16, 17:20] == 12001).all() and (split.ids[8:16, 10:17] == 14001).all()
    assert by_id[12001].bbox == (17, 8, 3, 8) and by_id[12001].score == pytest.approx(0.9, abs=1e-4)
    # classes in no group form one more group: the same split without naming the vehicles
    (implicit,) = panoptic_postprocess(heads, (32, 48), THINGS, config, thing_groups=((11, 12),))
    np.testing.assert_array_equal(implicit.ids, split.ids)


def test_small_segments_become_void_and_no_center_means_void_things():
    heads = _heads()
    heads["center"][:] = 0.0  # no instance center at all: thing pixels cannot be grouped
    (frame,) = panoptic_postprocess(heads, (32, 48), THINGS, PostprocessConfig(stuff_area=4))
    assert (frame.ids[8:16, 10:20] == 0).all()
    assert {s.category_id for s in frame.segments} == {0, 10}
    (frame,) = panoptic_postprocess(_heads(), (32, 48), THINGS, PostprocessConfig(stuff_area=10_000, thing_area=4))
    assert {s.category_id for s in frame.segments} == {13}  # stuff regions under the area threshold


def test_find_centers_keyed_nms_threshold_and_order():
    center = torch.zeros(1, 1, 20, 20)
    center[0, 0, 5, 5], center[0, 0, 5, 6], center[0, 0, 15, 15], center[0, 0, 2, 17] = 0.8, 0.6, 0.9, 0.05
    scores, ys, xs, valid = find_centers(center, threshold=0.1, nms_kernel=3, top_k=5)
    kept = [(float(s), int(y), int(x)) for s, y, x, v in zip(scores[0], ys[0], xs[0], valid[0]) if v]
    assert [(round(s, 2), y, x) for s, y, x in kept] == [(0.9, 15, 15), (0.8, 5, 5)]


def _reference_grouping(offset, ys, xs, valid, mask):
    """One pixel at a time: argmin over valid centers of the squared distance."""
    batch, _, height, width = offset.shape
    out = np.full((batch, height, width), -1)
    for b in range(batch):
        centers = [(float(ys[b, k]), float(xs[b, k]), k) for k in range(ys.shape[1]) if valid[b, k]]
        for y in range(height):
            for x in range(width):
                if not mask[b, y, x] or not centers:
                    continue
                ty, tx = y + float(offset[b, 0, y, x]), x + float(offset[b, 1, y, x])
                out[b, y, x] = min(centers, key=lambda c: ((c[0] - ty) ** 2 + (c[1] - tx) ** 2, c[2]))[2]
    return out


def test_grouping_matches_slow_reference_on_random_heads():
    gen = torch.Generator().manual_seed(3)
    offset = torch.randn(2, 2, 12, 16, generator=gen) * 6
    ys, xs = torch.randint(0, 12, (2, 5), generator=gen), torch.randint(0, 16, (2, 5), generator=gen)
    valid = torch.tensor([[True, True, True, False, False], [False] * 5])
    mask = torch.rand(2, 12, 16, generator=gen) > 0.3
    got = group_pixels(offset, ys, xs, valid, mask, chunk=37).numpy()
    np.testing.assert_array_equal(got, _reference_grouping(offset, ys, xs, valid, mask))


def test_mask_pool_is_normalised_masked_mean():
    gen = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, 3, 6, 7, generator=gen)
    masks = (torch.rand(1, 2, 6, 7, generator=gen) > 0.5).float()
    pooled = mask_pool(embedding, masks)[0].numpy()
    for n in range(2):
        m = masks[0, n].numpy().astype(bool)
        mean = embedding[0].numpy()[:, m].mean(axis=1)
        np.testing.assert_allclose(pooled[n], mean / np.linalg.norm(mean), rtol=1e-5)


@pytest.mark.parametrize("groups", [(), ((11, 12), (13,))], ids=["one-vote", "human-vehicle"])
def test_batched_equals_frame_by_frame(groups):
    torch.manual_seed(0)
    model = PanopticNet(PanopticNetConfig(widths=(8, 8, 16, 16), decoder_channels=8, head_channels=8)).eval()
    with torch.no_grad():
        outputs = model(torch.rand(3, 3, 64, 96))
    outputs["center"] = torch.rand_like(outputs["center"])  # an untrained model has no peaks
    config = PostprocessConfig(thing_area=1, stuff_area=1)
    batched = panoptic_postprocess(outputs, (64, 96), THINGS, config, groups)
    for b in range(3):
        (alone,) = panoptic_postprocess({k: v[b:b + 1] for k, v in outputs.items()}, (64, 96), THINGS, config, groups)
        np.testing.assert_array_equal(alone.ids, batched[b].ids)
        assert alone.segments == batched[b].segments
        np.testing.assert_allclose(alone.embeddings, batched[b].embeddings, atol=1e-6)
    ids, segments = batched[0].ids, batched[0].segments
    assert set(np.unique(ids)) - {0} == {s.id for s in segments}
    for s in segments:
        ys, xs = np.nonzero(ids == s.id)
        assert s.area == len(ys) and s.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_model_output_contract():
    config = PanopticNetConfig(embedding_dim=5)
    model = PanopticNet(config).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 128))
    assert tuple(out) == OUTPUT_KEYS
    assert out["semantic"].shape == (2, 19, 16, 32) and out["center"].shape == (2, 1, 16, 32)
    assert out["offset"].shape == (2, 2, 16, 32) and out["embedding"].shape == (2, 5, 16, 32)
    assert PanopticNetConfig.from_json(config.to_json()) == config


def test_stride_2_heads_keep_the_contract():
    """``head_stride=2``: every head at stride 2 (one common stride, as the contract asks), and a
    config without the new fields (older weight files) still means the stride-4 network."""
    config = PanopticNetConfig(widths=(8, 8, 16, 16), decoder_channels=8, head_channels=8, head_stride=2,
                               fine_channels=8)
    with torch.no_grad():
        out = PanopticNet(config).eval()(torch.rand(1, 3, 64, 128))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {k: (32, 64) for k in OUTPUT_KEYS}
    old = {k: v for k, v in PanopticNetConfig().to_json().items() if k not in ("head_stride", "fine_channels")}
    assert PanopticNetConfig.from_json(old).head_stride == 4
    with pytest.raises(ValueError, match="head_stride"):
        PanopticNetConfig(head_stride=8)


def test_a_finer_semantic_head_keeps_the_other_heads_at_their_stride():
    """``semantic_stride=2``: the semantic logits come from the decoder's stride-2 level, the
    other heads stay at stride 4; the contract accepts that, and the losses train it."""
    from operators.segmentation.loading import validate_outputs
    from operators.training.losses import LossWeights, total_loss
    from operators.training.targets import batch_targets

    config = PanopticNetConfig(widths=(8, 8, 16, 16), decoder_channels=8, head_channels=8, fine_channels=8,
                               semantic_stride=2)
    images = torch.rand(2, 3, 64, 128)
    out = PanopticNet(config)(images)
    assert tuple(out["semantic"].shape[-2:]) == (32, 64)
    assert {tuple(out[k].shape[-2:]) for k in ("center", "offset", "embedding")} == {(16, 32)}
    assert validate_outputs(out, images, 19, True, "tiny").keys() == set(OUTPUT_KEYS)
    frame = PanopticFrame(np.zeros((64, 128), np.int32), [])
    frame.ids[:, :64], frame.ids[20:40, 80:100] = 1000, 14001
    frame.segments.extend([SegmentInfo(1000, 0, 0, (0, 0, 1, 1), 0), SegmentInfo(14001, 13, 0, (0, 0, 1, 1), 0)])
    targets = batch_targets([frame, frame], set(config.thing_ids), sigma=4.0)
    loss, terms = total_loss(out, targets, LossWeights(semantic_upsample=1))
    loss.backward()
    assert all(np.isfinite(v) for v in terms.values())
    assert PanopticNet(config).semantic_head[0][0].in_channels == 8  # reads the stride-2 level
    with pytest.raises(ValueError, match="semantic_stride"):
        PanopticNetConfig(head_stride=2, semantic_stride=4)


def test_contract_refuses_center_and_offset_at_different_strides():
    from operators.errors import FormatMismatchError
    from operators.segmentation.loading import validate_outputs

    images = torch.rand(1, 3, 64, 128)
    outputs = {"semantic": torch.zeros(1, 19, 32, 64), "center": torch.zeros(1, 1, 16, 32),
               "offset": torch.zeros(1, 2, 32, 64)}
    with pytest.raises(FormatMismatchError, match="center, offset and embedding must share one stride"):
        validate_outputs(outputs, images, 19, False, "model m on frame f")
    outputs["offset"] = torch.zeros(1, 2, 16, 30)
    with pytest.raises(FormatMismatchError, match="'offset' of size \\(16, 30\\) is not the input size"):
        validate_outputs(outputs, images, 19, False, "model m on frame f")


def test_average_with_mirror_is_the_mean_of_aligned_heads():
    """Heads of a mirrored input, mirrored back, line up cell for cell with the original's;
    their x offsets point the other way. A mirror-symmetric scene's heads are unchanged."""
    from operators.segmentation.postprocess import average_with_mirror

    torch.manual_seed(0)
    heads = {"semantic": torch.randn(1, 3, 4, 6), "center": torch.rand(1, 1, 4, 6), "offset": torch.randn(1, 2, 4, 6)}
    mirrored = {k: v.flip(-1) for k, v in heads.items()}
    mirrored["offset"] = mirrored["offset"] * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
    for key, value in average_with_mirror(heads, mirrored).items():
        torch.testing.assert_close(value, heads[key])
    other = {k: torch.zeros_like(v) for k, v in heads.items()}
    averaged = average_with_mirror(heads, other)
    torch.testing.assert_close(averaged["center"], heads["center"] / 2)
    shifted = dict(other, offset=torch.zeros(1, 2, 4, 6))
    shifted["offset"][0, 1, :, 0] = 3.0  # mirrored frame: +3 px in x at its first column
    back = average_with_mirror(other, shifted)["offset"]
    assert float(back[0, 1, 0, 5]) == -1.5 and float(back[0, 0].abs().sum()) == 0.0


def test_average_with_shifted_moves_the_shifted_heads_back_at_full_resolution():
    """Full-resolution heads of a frame moved 2 px down-right, moved back, coincide with the
    frame's own (but in the 2 replicated rows/columns at the far edge); offsets keep their
    values. Stride-4 heads are upsampled to the input size first, then moved back by 2 px."""
    from operators.segmentation.postprocess import average_with_shifted, translate_images

    torch.manual_seed(0)
    heads = {"semantic": torch.randn(1, 3, 8, 12), "center": torch.rand(1, 1, 8, 12), "offset": torch.randn(1, 2, 8, 12)}
    moved = {k: translate_images(v, 2) for k, v in heads.items()}
    torch.testing.assert_close(moved["center"][..., 2:, 2:], heads["center"][..., :-2, :-2])
    averaged = average_with_shifted(heads, moved, 2, (8, 12))
    for key, value in averaged.items():
        assert value.shape == heads[key].shape
        torch.testing.assert_close(value[..., :-2, :-2], heads[key][..., :-2, :-2])
    coarse = {"center": torch.rand(1, 1, 2, 3), "offset": torch.full((1, 2, 2, 3), 5.0)}
    averaged = average_with_shifted(coarse, {k: v.clone() for k, v in coarse.items()}, 2, (8, 12))
    torch.testing.assert_close(averaged["offset"], torch.full((1, 2, 8, 12), 5.0))  # vectors: not moved in value
    full = torch.nn.functional.interpolate(coarse["center"], size=(8, 12), mode="bilinear", align_corners=False)
    back = torch.cat([full[..., 2:, :], full[..., -1:, :].expand(-1, -1, 2, -1)], -2)
    back = torch.cat([back[..., 2:], back[..., -1:].expand(-1, -1, -1, 2)], -1)  # 2 px up-left, edges replicated
    torch.testing.assert_close(averaged["center"], (full + back) / 2)


def test_a_plateau_gives_one_center():
    """A coarse peak upsampled ×4 bilinearly is a 2×2 plateau of equal maxima: one center."""
    coarse = torch.zeros(1, 1, 8, 8)
    coarse[0, 0, 3, 4] = 1.0
    fine = torch.nn.functional.interpolate(coarse, scale_factor=4, mode="bilinear", align_corners=False)
    assert int((fine == fine.max()).sum()) == 4
    scores, ys, xs, valid = find_centers(fine, threshold=0.1, nms_kernel=7, top_k=10)
    assert int(valid.sum()) == 1 and (int(ys[0, 0]), int(xs[0, 0])) == (13, 17)


def test_first_argmax_equals_torch_argmax_with_ties():
    from operators.segmentation.postprocess import first_argmax

    values = torch.randn(2, 19, 7, 9).softmax(dim=1)
    values[:, 5] = values[:, 3]                 # exact ties between two classes
    values[:, :, :2] = 1 / 19                   # every class tied
    values[1, 7, 4, 4] = values[1].max() + 1    # one clear winner
    assert torch.equal(first_argmax(values, dim=1), values.argmax(dim=1))
    assert torch.equal(first_argmax(values[0], dim=0), values[0].argmax(dim=0))
