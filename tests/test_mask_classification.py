"""Models of the other output contracts: Mask2Former's panoptic inference against a per-pixel
reference, finished panoptic maps, contract detection and checks, input specs and a model's
own categories."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mask_models import (ReplayPanopticMap, TinyMaskFormer, export, mask2former_panoptic_inference, padded_input,
                         reference_panoptic)
from operators.errors import FormatMismatchError
from operators.formats.categories import CITYSCAPES_CATEGORIES, read_categories
from operators.segmentation.contracts import InputSpec, contract_outputs, prepare_input
from operators.segmentation.host import SegmentationHost
from operators.segmentation.mask_classification import MaskClassificationConfig, mask_classification_panoptic

IS_THING = [c.isthing for c in CITYSCAPES_CATEGORIES]


def _frames(n=3, height=70, width=100, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def _check_against_reference(outputs, padded, size, results, config=MaskClassificationConfig()):
    """Every frame of the host's ``results`` equals the reference on the model's ``outputs``."""
    events = {}
    for b, result in enumerate(results):
        ref = reference_panoptic(outputs["pred_logits"][b].numpy(), outputs["pred_masks"][b].numpy(), padded, size,
                                 IS_THING, config.object_mask_threshold, config.overlap_threshold)
        np.testing.assert_array_equal(result.ids, ref.ids)
        assert [(s.id, s.category_id) for s in result.segments] == [(i, c) for i, c, _ in ref.rows]
        np.testing.assert_allclose([s.score for s in result.segments], [s for _, _, s in ref.rows], rtol=1e-5)
        for s in result.segments:
            ys, xs = np.nonzero(result.ids == s.id)
            assert s.area == len(ys) and s.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        for key, value in ref.events.items():
            events[key] = events.get(key, 0) + value
    return events


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_inference_equals_the_per_pixel_reference(seed):
    """Random outputs of a small mask-classification model, three frames at once (cropped from
    the padded input), against the per-pixel reference frame by frame; the outputs exercise
    every rule: exact ties (duplicated queries), the 0.5 boundary, merged stuff, overlap drops."""
    model = TinyMaskFormer(seed=seed).eval()
    frames = _frames(seed=seed)
    images = padded_input(frames)
    with torch.no_grad():
        outputs = model(images)
    size, padded = frames.shape[1:3], tuple(images.shape[-2:])
    maps = mask_classification_panoptic(outputs["pred_logits"], outputs["pred_masks"], padded, size,
                                        torch.tensor(IS_THING))
    from operators.segmentation.panoptic_map import frame_segments

    results = frame_segments(maps, [c.id for c in CITYSCAPES_CATEGORIES])
    events = _check_against_reference(outputs, padded, size, results)
    assert events["kept"] >= 6 and events["tie_pixels"] > 0 and events["boundary_pixels"] > 0
    assert sum(len(r.segments) for r in results) >= 3


def test_reference_cases_cover_merges_and_overlap_drops():
    """Across seeds the reference comparison above sees stuff of one class merged and queries
    dropped by the overlap rule (else it would not test them); thresholds are honoured."""
    totals = {}
    for seed in range(3):
        model = TinyMaskFormer(seed=seed).eval()
        frames = _frames(seed=seed)
        images = padded_input(frames)
        with torch.no_grad():
            outputs = model(images)
        for config in (MaskClassificationConfig(), MaskClassificationConfig(0.5, 0.95)):
            maps = mask_classification_panoptic(outputs["pred_logits"], outputs["pred_masks"],
                                                tuple(images.shape[-2:]), frames.shape[1:3], torch.tensor(IS_THING),
                                                config)
            from operators.segmentation.panoptic_map import frame_segments

            results = frame_segments(maps, list(range(19)))
            for key, value in _check_against_reference(outputs, tuple(images.shape[-2:]), frames.shape[1:3],
                                                       results, config).items():
                totals[key] = totals.get(key, 0) + value
    assert totals["merged"] > 0 and totals["dropped_overlap"] > 0


@pytest.mark.parametrize("seed", range(4))
def test_batched_inference_equals_mask2former_code(seed):
    """Against Mask2Former's own code (every mask upsampled, a loop of boolean masks per image):
    100 queries, a batch of four, thresholds of both kinds."""
    model = TinyMaskFormer(queries=100, seed=seed).eval()
    frames = _frames(4, 70, 100, seed=seed)
    images = padded_input(frames)
    with torch.no_grad():
        outputs = model(images)
    full = torch.nn.functional.interpolate(outputs["pred_masks"], size=(96, 128), mode="bilinear",
                                           align_corners=False)[..., :70, :100]
    segments = 0
    for config in (MaskClassificationConfig(), MaskClassificationConfig(0.5, 0.6)):
        maps = mask_classification_panoptic(outputs["pred_logits"], outputs["pred_masks"], (96, 128), (70, 100),
                                            torch.tensor(IS_THING), config)
        for b in range(4):
            ids, rows = mask2former_panoptic_inference(outputs["pred_logits"][b], full[b], IS_THING,
                                                       config.object_mask_threshold, config.overlap_threshold)
            assert torch.equal(maps.ids[b].int(), ids) and [(i, c) for i, c, _ in maps.rows(b)] == rows
            segments += len(rows)
    assert segments >= 8


@pytest.mark.parametrize("names", ["detr", "hf", "tuple", "hf-tuple"])
def test_torchscript_model_through_the_host_equals_the_reference(tmp_path, names):
    """A TorchScript export with Cityscapes' 19 classes and the default input: no adapter, no
    option; the contract is detected from the outputs (our names, Hugging Face's, a tuple, a
    Hugging Face tuple with hidden states after the logits and masks)."""
    model = TinyMaskFormer(seed=1, names=names)
    path = export(model, tmp_path / "mask2former.pt", torch.rand(1, 3, 64, 96))
    frames = _frames(4, 70, 100, seed=3)
    host = SegmentationHost("artifact", path, batch_size=3)
    results = host.segment(list(frames))
    assert host.contract == "mask-classification"
    with torch.no_grad():
        raw = TinyMaskFormer(seed=1, names="detr").eval()(padded_input(frames))
    _check_against_reference(raw, (96, 128), (70, 100), results)
    assert all(r.embeddings.shape == (len(r.segments), 0) for r in results)


def test_embedding_output_gives_maskpool_embeddings(tmp_path):
    path = export(TinyMaskFormer(seed=0, embedding_dim=5), tmp_path / "m.pt", torch.rand(1, 3, 64, 96))
    frames = _frames(2)
    host = SegmentationHost("artifact", path)
    results = host.segment(list(frames))
    module = torch.jit.load(path)
    with torch.no_grad():
        embedding = module(padded_input(frames))["embedding"]
    full = torch.nn.functional.interpolate(embedding, size=(96, 128), mode="bilinear", align_corners=False)
    for b, result in enumerate(results):
        assert result.embeddings.shape == (len(result.segments), 5) and result.segments
        for segment, vector in zip(result.segments, result.embeddings):
            mask = torch.from_numpy(result.ids == segment.id)
            mean = full[b, :, :70, :100][:, mask].mean(dim=1)
            np.testing.assert_allclose(vector, (mean / mean.norm()).numpy(), atol=1e-5)
    given = host.embed_segments([frames[0]], [results[0].to_panoptic_frame()])[0]
    np.testing.assert_allclose(given, results[0].embeddings, atol=1e-5)


def test_finished_map_round_trip(tmp_path):
    """The mask-classification result replayed by a finished-map model (its rows padded with id 0,
    one listed segment cropped away with the padding) comes back the same."""
    mask_path = export(TinyMaskFormer(seed=2), tmp_path / "mask.pt", torch.rand(1, 3, 64, 96))
    frames = _frames(2)
    expected = SegmentationHost("artifact", mask_path).segment(list(frames))
    panoptic = torch.zeros((2, 96, 128), dtype=torch.int32)
    rows = torch.zeros((2, 12, 3))
    for b, result in enumerate(expected):
        panoptic[b, :70, :100] = torch.from_numpy(result.ids)
        for n, s in enumerate(result.segments):
            rows[b, n] = torch.tensor([s.id, s.category_id, s.score])
    panoptic[:, 80:, :] = 77  # only in the padding: cropped away, its row dropped
    rows[:, 11] = torch.tensor([77.0, 10.0, 0.5])
    path = export(ReplayPanopticMap(panoptic, rows), tmp_path / "map.pt")
    host = SegmentationHost("artifact", path, batch_size=2)  # the replay answers a batch of both frames
    again = host.segment(list(frames))
    assert host.contract == "panoptic-map"
    for a, b in zip(expected, again):
        np.testing.assert_array_equal(a.ids, b.ids)
        assert [s.to_json() for s in a.segments] == [s.to_json() for s in b.segments]


def test_broken_outputs_name_the_model_file_and_the_frames(tmp_path):
    frames = _frames(2)
    wrong_classes = export(TinyMaskFormer(classes=7), tmp_path / "seven.pt", torch.rand(1, 3, 64, 96))
    with pytest.raises(FormatMismatchError, match=r"seven.pt on input frame 0 … frame 1 .*'pred_logits' has 8 "
                                                  r"columns; the model's 19 classes need 20"):
        SegmentationHost("artifact", wrong_classes, batch_size=2).segment(list(frames))
    named = export(TinyMaskFormer(), tmp_path / "named.pt", torch.rand(1, 3, 64, 96))
    with pytest.raises(FormatMismatchError, match=r"named.pt on input .*mask-classification contract, but the "
                                                  r"panoptic-map contract was named"):
        SegmentationHost("artifact", named, contract="panoptic-map").segment(list(frames))
    panoptic = torch.ones((2, 70, 100), dtype=torch.int64)
    panoptic[1, 5, 5] = 9
    rows = torch.tensor([[[1.0, 3.0, 0.9]], [[1.0, 3.0, 0.9]]])
    unlisted = export(ReplayPanopticMap(panoptic, rows), tmp_path / "unlisted.pt")
    with pytest.raises(FormatMismatchError, match=r"unlisted.pt on input a … b .*frame b: ids \[9\] are in the "
                                                  r"panoptic map but not in the segment rows"):
        SegmentationHost("artifact", unlisted, batch_size=2).segment(list(frames), ["a", "b"])
    rows[1, 0, 1] = 19.0
    bad_class = export(ReplayPanopticMap(torch.ones((2, 70, 100), dtype=torch.int64), rows), tmp_path / "cls.pt")
    with pytest.raises(FormatMismatchError, match=r"frame b: category ids \[19\] are not class indices"):
        SegmentationHost("artifact", bad_class, batch_size=2).segment(list(frames), ["a", "b"])
    with pytest.raises(FormatMismatchError, match=r"none of the contracts"):
        contract_outputs({"logits": torch.zeros(1)}, None, "m.pt")
    with pytest.raises(ValueError, match="flip.*panoptic-deeplab contract"):
        SegmentationHost("artifact", named, contract="mask-classification", flip=True)


def test_contract_held_to_after_the_first_batch(tmp_path):
    """An artifact's contract is detected once; a later batch in another contract is an error."""
    host = SegmentationHost("artifact", export(TinyMaskFormer(), tmp_path / "m.pt", torch.rand(1, 3, 64, 96)))
    host.segment(list(_frames(1)))
    assert host.contract == "mask-classification"
    host.model = lambda images: {"panoptic": torch.ones(images.shape[0], *images.shape[2:], dtype=torch.long),
                                 "segments": torch.ones(images.shape[0], 1, 3)}
    with pytest.raises(FormatMismatchError, match="m.pt on input frame 0 .*panoptic-map contract, but the "
                                                  "mask-classification contract was named"):
        host.segment(list(_frames(1)))


def test_input_spec_beside_the_artifact(tmp_path):
    """BGR in [0, 255], ImageNet mean/std, padded to 64 with zeros: what the model gets."""
    spec = {"channel_order": "BGR", "value_range": [0, 255], "mean": [103.53, 116.28, 123.675],
            "std": [57.375, 57.12, 58.395], "padding_multiple": 64, "padding_value": 0.0}
    frames = _frames(2)
    images = prepare_input(InputSpec(**spec), torch.from_numpy(frames))
    expected = (frames[..., ::-1].astype(np.float32) - np.array(spec["mean"], np.float32)) / np.array(spec["std"],
                                                                                                     np.float32)
    assert images.shape == (2, 3, 128, 128)
    np.testing.assert_allclose(images[:, :, :70, :100].permute(0, 2, 3, 1).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert (images[:, :, 70:] == 0).all() and (images[:, :, :, 100:] == 0).all()
    default = prepare_input(InputSpec(), torch.from_numpy(frames))
    assert torch.equal(default, padded_input(frames))

    class Echo(torch.nn.Module):  # a finished map whose one segment's score is the input's mean
        def forward(self, images):
            b, _, h, w = images.shape
            return {"panoptic": torch.ones(b, h, w, dtype=torch.long),
                    "segments": torch.stack([torch.ones(b), torch.zeros(b), images.mean(dim=(1, 2, 3))], 1)[:, None]}

    path = export(Echo(), tmp_path / "echo.pt")
    (tmp_path / "echo.pt.input.json").write_text(json.dumps(spec))
    (result,) = SegmentationHost("artifact", path).segment(list(frames[:1]))
    assert result.segments[0].score == pytest.approx(float(images[:1].mean()), rel=1e-5)
    (tmp_path / "echo.pt.input.json").write_text(json.dumps({"channel_order": "BRG"}))
    with pytest.raises(FormatMismatchError, match=r"echo.pt.input.json: invalid input spec: channel_order"):
        SegmentationHost("artifact", path)


def test_categories_beside_the_artifact(tmp_path):
    """A model's own classes (COCO-style ids, not contiguous): class index i → the i-th entry."""
    categories = [{"id": 7, "name": "road", "isthing": 0}, {"id": 24, "name": "person", "isthing": 1},
                  {"id": 33, "name": "sky", "isthing": 0, "color": [70, 130, 180]}]
    model = TinyMaskFormer(classes=3, seed=4)
    path = export(model, tmp_path / "coco.pt", torch.rand(1, 3, 64, 96))
    (tmp_path / "coco.pt.categories.json").write_text(json.dumps({"categories": categories}))
    host = SegmentationHost("artifact", path)
    assert [c.id for c in host.categories] == [7, 24, 33] and host.thing_ids == (1,)
    frames = _frames(2)
    results = host.segment(list(frames))
    with torch.no_grad():
        raw = model.eval()(padded_input(frames))
    for b, result in enumerate(results):
        ref = reference_panoptic(raw["pred_logits"][b].numpy(), raw["pred_masks"][b].numpy(), (96, 128), (70, 100),
                                 [False, True, False])
        np.testing.assert_array_equal(result.ids, ref.ids)
        assert [s.category_id for s in result.segments] == [[7, 24, 33][c] for _, c, _ in ref.rows]
    assert sum(len(r.segments) for r in results) > 0
    (tmp_path / "coco.pt.categories.json").write_text(json.dumps([{"id": 7, "isthing": 0}, {"id": 7, "isthing": 1}]))
    with pytest.raises(FormatMismatchError, match=r"coco.pt.categories.json: category ids \[7\] are listed more"):
        SegmentationHost("artifact", path)
    (tmp_path / "c.json").write_text(json.dumps([{"id": 5, "name": "x"}]))
    with pytest.raises(FormatMismatchError, match=r"c.json: category record .* lacks 'id' or 'isthing'"):
        read_categories(str(tmp_path / "c.json"))
