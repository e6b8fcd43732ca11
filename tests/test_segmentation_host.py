"""The segmentation host: backends, safe loading, checksums, device choice, bad input."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from operators.association import TrackerConfig
from operators.errors import CorruptFileError, FormatMismatchError, InputError
from operators.formats.panoptic import PanopticFrame, SegmentInfo
from operators.formats.vps_layout import PredictionWriter
from operators.device import gpu_assigned, select_placement
from operators.segmentation.host import SegmentationHost, default_batch_size, open_segmenter
from operators.segmentation.precomputed import PrecomputedSegmenter
from operators.segmentation.loading import save_builtin
from operators.segmentation.model import PanopticNet, PanopticNetConfig

TINY = PanopticNetConfig(widths=(8, 8, 16, 16), decoder_channels=8, head_channels=8, embedding_dim=6)


@pytest.fixture
def tiny_weights(tmp_path) -> str:
    torch.manual_seed(0)
    model = PanopticNet(TINY)
    with torch.no_grad():  # a visible center peak pattern so the untrained net yields instances
        model.center_head[1].bias.fill_(0.2)
    uri = str(tmp_path / "tiny.pt")
    save_builtin(model, uri)
    return uri


def _frames(n=2, height=70, width=100):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def test_builtin_backend_outputs_and_checksum(tiny_weights):
    host = SegmentationHost("builtin", tiny_weights, batch_size=1)
    assert host.model_sha256 == hashlib.sha256(open(tiny_weights, "rb").read()).hexdigest()
    assert host.placement.device.type == "cpu"
    results = host.segment(_frames())
    assert len(results) == 2
    for result in results:
        assert result.ids.shape == (70, 100) and result.ids.dtype == np.int32
        assert result.embeddings.shape == (len(result.segments), 6)
        np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, rtol=1e-4)
        assert set(np.unique(result.ids)) - {0} == {s.id for s in result.segments}
    # batch size does not change the result
    again = SegmentationHost("builtin", tiny_weights, batch_size=4).segment(_frames())
    for a, b in zip(results, again):
        np.testing.assert_array_equal(a.ids, b.ids)


def test_thing_groups_default_to_cityscapes_categories_and_are_checked(tmp_path, tiny_weights):
    from operators.formats.categories import CITYSCAPES_THING_GROUPS

    assert CITYSCAPES_THING_GROUPS == ((11, 12), (13,), (14, 15, 16), (17, 18))  # human, car, large, two-wheel
    assert SegmentationHost("builtin", tiny_weights).thing_groups == CITYSCAPES_THING_GROUPS
    assert SegmentationHost("builtin", tiny_weights, thing_groups=()).thing_groups == ()
    with pytest.raises(ValueError, match=r"\[3\] that are not thing classes of .*tiny.pt"):
        SegmentationHost("builtin", tiny_weights, thing_groups=((3, 11),))
    other = PanopticNetConfig(widths=(8, 8, 16, 16), decoder_channels=8, head_channels=8, num_classes=4, thing_ids=(2, 3))
    save_builtin(PanopticNet(other), str(tmp_path / "other.pt"))
    assert SegmentationHost("builtin", str(tmp_path / "other.pt")).thing_groups == ()  # not the Cityscapes classes


def test_flip_makes_the_host_mirror_equivariant(tiny_weights):
    """With flip test-time augmentation a frame and its mirror image get mirrored class maps (the
    averaged heads are exact mirrors); without it an untrained network's maps are not. On by
    default for the built-in network only."""
    frame = _frames(1, height=64, width=96)[0]
    mirror = np.ascontiguousarray(frame[:, ::-1])

    def classes(result):
        category = {s.id: s.category_id for s in result.segments}
        return np.vectorize(lambda i: category.get(int(i), -1))(result.ids)

    # (the half-cell shift moves frames down and right, which a mirror does not commute with)
    host, plain = (SegmentationHost("builtin", tiny_weights, shift=False),
                   SegmentationHost("builtin", tiny_weights, flip=False, shift=False))
    assert SegmentationHost("builtin", tiny_weights).flip and not plain.flip
    for h in (host, plain):  # an untrained network predicts one class everywhere: make its logits vary
        with torch.no_grad():
            h.model.semantic_head[1].weight.mul_(300)
    a, b = host.segment([frame, mirror])
    assert len(np.unique(classes(a))) >= 3  # several classes (and VOID where segments were too small)
    np.testing.assert_array_equal(classes(a), classes(b)[:, ::-1])
    a, b = plain.segment([frame, mirror])
    assert (classes(a) != classes(b)[:, ::-1]).any()


def test_shift_augmentation_runs_the_network_on_the_frame_moved_by_half_a_cell(tiny_weights):
    """With ``shift`` (default for the built-in network) every batch also goes through the
    network moved 2 px (half the stride-4 cell) down and right, on top of the mirror passes;
    the heads are then averaged at full resolution, and the segments change."""
    frame = _frames(1, height=64, width=96)[0]
    host, plain = SegmentationHost("builtin", tiny_weights), SegmentationHost("builtin", tiny_weights, shift=False)
    assert host.shift and not plain.shift
    inputs = []
    for h in (host, plain):
        with torch.no_grad():  # an untrained network predicts one class everywhere: make its logits vary
            h.model.semantic_head[1].weight.mul_(300)
        h.model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    images = host._padded_images(frame[None])
    heads = host._heads(images, True, "frame 0")
    assert len(inputs) == 4 and heads["center"].shape[-2:] == (64, 96)  # 2 mirrors × 2 shifts; full resolution
    torch.testing.assert_close(inputs[2][..., 2:, 2:], images[..., :-2, :-2])  # the moved pass
    torch.testing.assert_close(inputs[2][..., :2, 2:], images[..., :1, :-2].expand(-1, -1, 2, -1))  # replicated
    a, = host.segment([frame])
    b, = plain.segment([frame])
    assert (a.ids != b.ids).any()


def test_refine_snaps_the_semantic_map_to_the_frame_before_grouping(tiny_weights):
    """With ``refine`` (default for the built-in network) the upsampled class probabilities are
    guided-filtered with the frame (``refine.refine_semantic``, the post-processing config's
    radius, ε and subsampling) before the grouping; without it they are not."""
    import operators.segmentation.host as host_module

    frame = _frames(1, height=64, width=96)[0]
    host = SegmentationHost("builtin", tiny_weights, flip=False, shift=False)
    plain = SegmentationHost("builtin", tiny_weights, flip=False, shift=False, refine=False)
    assert host.refine and not plain.refine
    for h in (host, plain):
        with torch.no_grad():  # an untrained network predicts one class everywhere: make its logits vary
            h.model.semantic_head[1].weight.mul_(300)
    calls = []
    original = host_module.refine_semantic

    def spy(logits, images, radius, eps, subsample):
        calls.append((tuple(images.shape), radius, eps, subsample))
        return original(logits, images, radius, eps, subsample)

    host_module.refine_semantic = spy
    try:
        a, = host.segment([frame])
        b, = plain.segment([frame])
    finally:
        host_module.refine_semantic = original
    config = host.postprocess
    assert calls == [((1, 3, 64, 96), config.refine_radius, config.refine_eps, config.refine_subsample)]
    assert (a.ids != b.ids).any()


def test_loads_from_fsspec_uri(tiny_weights):
    import fsspec

    uri = "memory://tubeflow-test/weights.pt"
    with fsspec.open(uri, "wb") as f:
        f.write(open(tiny_weights, "rb").read())
    host = SegmentationHost("builtin", uri)
    assert host.model_sha256 == SegmentationHost("builtin", tiny_weights).model_sha256


def test_weights_that_do_not_fit_name_the_file(tmp_path, tiny_weights):
    record = torch.load(tiny_weights, weights_only=True)
    record["state_dict"]["semantic_head.1.weight"] = torch.zeros(3, 8, 1, 1)
    del record["state_dict"]["center_head.1.bias"]
    bad = tmp_path / "bad_shapes.pt"
    torch.save(record, bad)
    with pytest.raises(FormatMismatchError, match="bad_shapes.pt.*do not fit.*missing.*center_head.1.bias"):
        SegmentationHost("builtin", str(bad))
    plain = tmp_path / "plain_state_dict.pt"
    torch.save(PanopticNet(TINY).state_dict(), plain)
    with pytest.raises(FormatMismatchError, match="plain_state_dict.pt.*not built-in PanopticNet weights"):
        SegmentationHost("builtin", str(plain))


def test_corrupt_missing_and_malicious_files(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a torch file")
    with pytest.raises(CorruptFileError, match="corrupt.pt"):
        SegmentationHost("builtin", str(corrupt))
    with pytest.raises(InputError, match="missing.pt"):
        SegmentationHost("builtin", str(tmp_path / "missing.pt"))
    marker = tmp_path / "pwned"

    class Payload:  # unpickling this would run os.system; weights_only must refuse it
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "x", "state_dict": Payload()}, evil)
    with pytest.raises(CorruptFileError, match="evil.pt"):
        SegmentationHost("builtin", str(evil))
    assert not marker.exists()


def test_bad_frames_name_model_and_frame(tiny_weights):
    host = SegmentationHost("builtin", tiny_weights)
    with pytest.raises(FormatMismatchError, match=r"cam7.*tiny.pt.*uint8"):
        host.segment([np.zeros((64, 64, 3), np.float32)], image_ids=["cam7"])
    with pytest.raises(FormatMismatchError, match="smaller than 32"):
        host.segment([np.zeros((16, 64, 3), np.uint8)])
    with pytest.raises(FormatMismatchError, match="broken"):
        host.segment([_frames(1)[0], np.zeros((64, 64), np.uint8)], image_ids=["ok", "broken"])


class _WrongChannels(torch.nn.Module):
    def forward(self, x):
        b, _, h, w = x.shape
        z = torch.zeros(b, 1, h // 4, w // 4)
        return {"semantic": torch.zeros(b, 7, h // 4, w // 4), "center": z, "offset": torch.cat([z, z], 1),
                "embedding": z}


def test_torchscript_artifact_matches_builtin_and_contract_is_checked(tmp_path, tiny_weights):
    # artifacts run unaugmented and unrefined by default
    builtin = SegmentationHost("builtin", tiny_weights, flip=False, shift=False, refine=False)
    scripted = torch.jit.trace(builtin.model, torch.rand(1, 3, 64, 96), strict=False)
    artifact = tmp_path / "model.ts"
    torch.jit.save(scripted, str(artifact))
    host = SegmentationHost("artifact", str(artifact))
    assert not host.flip and not host.shift and not host.refine
    frames = _frames(2, 64, 96)
    for a, b in zip(host.segment(frames), builtin.segment(frames)):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    augmented = SegmentationHost("artifact", str(artifact), flip=True, shift=True, refine=True).segment(frames)  # as builtin
    for a, b in zip(augmented, SegmentationHost("builtin", tiny_weights).segment(frames)):
        np.testing.assert_array_equal(a.ids, b.ids)
    broken = tmp_path / "broken.ts"
    torch.jit.save(torch.jit.trace(_WrongChannels(), torch.rand(1, 3, 64, 96), strict=False), str(broken))
    with pytest.raises(FormatMismatchError, match=r"broken.ts on input frame 0.*'semantic' has 7 channels"):
        SegmentationHost("artifact", str(broken)).segment(frames)
    with pytest.raises(CorruptFileError, match="junk.ts"):
        (tmp_path / "junk.ts").write_bytes(b"junk")
        SegmentationHost("artifact", str(tmp_path / "junk.ts"))


def test_torch_export_artifact(tmp_path, tiny_weights):
    builtin = SegmentationHost("builtin", tiny_weights, flip=False, shift=False, refine=False)
    # the host keeps its network NHWC; export the usual NCHW layout, as a user would
    program = torch.export.export(builtin.model.to(memory_format=torch.contiguous_format), (torch.rand(1, 3, 64, 96),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    host = SegmentationHost("artifact", str(path))
    frames = _frames(1, 64, 96)
    np.testing.assert_array_equal(host.segment(frames)[0].ids, builtin.segment(frames)[0].ids)


def test_precomputed_backend_reads_submission_layout(tmp_path):
    ids = np.zeros((40, 60), np.int32)
    ids[:, :30], ids[5:15, 35:50] = 1000, 14001
    segments = [SegmentInfo(1000, 0, 1200, (0, 0, 30, 40)), SegmentInfo(14001, 13, 150, (35, 5, 15, 10), score=0.8)]
    with PredictionWriter(str(tmp_path / "pred")) as writer:
        writer.add("0000_0000_x", PanopticFrame(ids, segments))
    host = open_segmenter("precomputed", str(tmp_path / "pred"))
    assert isinstance(host, PrecomputedSegmenter)
    (result,) = host.segment([np.zeros((40, 60, 3), np.uint8)], ["0000_0000_x"])
    np.testing.assert_array_equal(result.ids, ids)
    assert [(s.id, s.category_id, s.score) for s in result.segments] == [(1000, 0, 1.0), (14001, 13, 0.8)]
    assert result.embeddings.shape == (2, 0)
    with pytest.raises(InputError, match="no prediction"):
        host.segment([np.zeros((40, 60, 3), np.uint8)], ["nope"])


def test_device_selection_follows_ray_gpu_assignment():
    assert not gpu_assigned({"CUDA_VISIBLE_DEVICES": ""}) and gpu_assigned({"CUDA_VISIBLE_DEVICES": "0,1"})
    assert gpu_assigned({})  # outside Ray: any visible GPU
    gpu = select_placement(cuda_available=True, bf16_supported=True, environ={"CUDA_VISIBLE_DEVICES": "3"})
    assert gpu.device.type == "cuda" and gpu.autocast_dtype == torch.bfloat16 and gpu.pin_memory
    old_gpu = select_placement(cuda_available=True, bf16_supported=False, environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert old_gpu.autocast_dtype == torch.float16
    no_gpu_actor = select_placement(cuda_available=True, environ={"CUDA_VISIBLE_DEVICES": ""})
    assert no_gpu_actor.device.type == "cpu" and no_gpu_actor.autocast_dtype is None and not no_gpu_actor.pin_memory
    assert select_placement("cuda", "fp32", cuda_available=True, bf16_supported=True).autocast_dtype is None
    assert select_placement(cuda_available=False).device.type == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_placement("cuda", cuda_available=False)
    with pytest.raises(ValueError, match="precision"):
        select_placement(precision="int4")
    cpu = select_placement("cpu")
    tensor = cpu.to_device(np.ones((2, 2), np.uint8))
    assert tensor.device.type == "cpu" and not tensor.is_pinned()
    # batch size when the caller gives none: batches fill a GPU, and slow down the CPU
    assert default_batch_size(gpu) == 8 and default_batch_size(cpu) == 1 and default_batch_size(no_gpu_actor) == 1


def test_batch_size_default_and_explicit(tiny_weights):
    assert SegmentationHost("builtin", tiny_weights, device="cpu").batch_size == 1
    assert SegmentationHost("builtin", tiny_weights, batch_size=3).batch_size == 3
    with pytest.raises(ValueError, match="batch_size"):
        SegmentationHost("builtin", tiny_weights, batch_size=0)


class _NoEmbedding(torch.nn.Module):
    """An artifact with the three Panoptic-DeepLab heads and no embedding head."""

    def forward(self, x):
        b, _, h, w = x.shape
        semantic = torch.zeros(b, 19, h // 4, w // 4)
        semantic[:, 13] = 5.0  # everything "car"
        center = torch.zeros(b, 1, h // 4, w // 4)
        center[:, :, h // 8, w // 8] = 1.0
        return {"semantic": semantic, "center": center, "offset": torch.zeros(b, 2, h // 4, w // 4)}


def test_artifact_without_embeddings_gives_zero_width_embeddings(tmp_path):
    path = tmp_path / "three_heads.ts"
    torch.jit.save(torch.jit.trace(_NoEmbedding(), torch.rand(1, 3, 64, 96), strict=False), str(path))
    (result,) = SegmentationHost("artifact", str(path)).segment(_frames(1, 64, 96))
    assert [(s.id, s.category_id, s.area) for s in result.segments] == [(14001, 13, 64 * 96)]
    assert result.embeddings.shape == (1, 0)


def test_held_out_pq_evaluation_runs_on_the_synthetic_corpus(tiny_weights):
    from operators.training.evaluation import evaluate_builtin

    result = evaluate_builtin(tiny_weights, videos_per_scenario=1, frames=6, height=64, width=128,
                              scenarios=("default",))
    assert result["frames"] == 2 and 0.0 <= result["pq"] <= 100.0
    assert set(result["per_scenario"]) == {"default"}
    assert result["model_sha256"] == hashlib.sha256(open(tiny_weights, "rb").read()).hexdigest()


class _OracleHost:
    """A "segmenter" that answers with the synthetic corpus's own GT (or nothing at all)."""

    model_sha256 = "oracle"

    def __init__(self, frames_by_image_id, empty=False):
        self.frames, self.empty = frames_by_image_id, empty

    def segment(self, rgbs, image_ids):
        from operators.segmentation.postprocess import FrameSegments

        out = []
        for rgb, image_id in zip(rgbs, image_ids):
            gt = self.frames[image_id].panoptic
            ids = np.zeros_like(gt.ids) if self.empty else gt.ids
            segments = [] if self.empty else list(gt.segments)
            out.append(FrameSegments(ids, segments, np.zeros((len(segments), 0), np.float32)))
        return out


def test_held_out_evaluation_scores_a_perfect_segmenter_100_and_an_empty_one_0():
    from operators.synth import SynthConfig, generate_video
    from operators.training.evaluation import HELD_OUT_SEED, evaluate_host

    options = dict(videos_per_scenario=1, frames=6, height=64, width=128, scenarios=("default",))
    synth = SynthConfig(videos=1, frames=6, height=64, width=128, seed=HELD_OUT_SEED, annotate_every=5)
    frames = {f.image_id: f for f in generate_video(synth, 0)}
    perfect = evaluate_host(_OracleHost(frames), **options)
    assert perfect["pq"] == pytest.approx(100.0) and perfect["sq"] == pytest.approx(100.0)
    assert perfect["per_scenario"]["default"]["pq"] == pytest.approx(100.0)
    assert evaluate_host(_OracleHost(frames, empty=True), **options)["pq"] == 0.0


def test_embed_given_segments_equals_maskpool_of_the_embedding_head(tiny_weights):
    host = SegmentationHost("builtin", tiny_weights, flip=False, shift=False)  # one pass: the head's own map
    frame = _frames(1, 64, 96)[0]
    ids = np.zeros((64, 96), np.int32)
    ids[:, :40], ids[10:30, 50:80] = 1000, 14001
    target = PanopticFrame(ids, [SegmentInfo(1000, 0), SegmentInfo(14001, 13)])
    (embedded,) = host.embed_segments([frame], [target])
    with torch.no_grad():
        head = host.model(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255)["embedding"]
        full = torch.nn.functional.interpolate(head, size=(64, 96), mode="bilinear", align_corners=False)[0].numpy()
    for row, seg_id in zip(embedded, (1000, 14001)):
        mean = full[:, ids == seg_id].mean(axis=1)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-4, atol=1e-6)


def test_association_evaluation_compares_embeddings_with_colour(tiny_weights):
    from operators.training.evaluation import _without_identities, evaluate_association
    from operators.synth import SynthConfig, generate_video

    frame = next(iter(generate_video(SynthConfig(videos=1, frames=1, height=64, width=128), 0))).panoptic
    stripped = _without_identities(frame, salt=3)
    assert sorted(s.area for s in stripped.segments) == sorted(s.area for s in frame.segments)
    for s in stripped.segments:  # same masks, ids renumbered within their category
        assert (stripped.ids == s.id).sum() == s.area and s.id // 1000 == s.category_id + 1
    # tentative_max_area=0: the default tracker holds a small newcomer back for a frame (not output),
    # which would make k = 0 fall below 100 for reasons other than identities
    result = evaluate_association(SegmentationHost("builtin", tiny_weights), scenarios=("similar",), videos=1,
                                  frames=6, height=64, width=128, tracker_config=TrackerConfig(tentative_max_area=0))
    assert set(result["similar"]) == {"embeddings", "colour"}
    for arm in result["similar"].values():
        # GT masks in every frame: per frame (k = 0) every segment matches exactly, whatever its id;
        # over time only the tracker's identities count, so VPQ can only fall from there
        assert arm["per_k"][0] == pytest.approx(100.0)
        windows = [v for v in arm["per_k"].values() if not np.isnan(v)]  # 2 annotated frames: k ≤ 5 only
        assert len(windows) == 2 and 0 <= arm["vpq"] <= 100 and all(v <= 100 + 1e-9 for v in windows)
