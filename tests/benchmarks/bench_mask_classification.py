"""Mask-classification post-processing: the batched inference against Mask2Former's own
per-image procedure.

Run with ``.venv/bin/python -m pytest -q -s -m benchmark tests/benchmarks/bench_mask_classification.py``.
The baseline is Mask2Former's ``panoptic_inference`` as its code runs it (facebookresearch/
Mask2Former, ``mask_former_model.py``): every one of the Q queries' masks upsampled to the padded
input, cropped, then per image a softmax, the kept queries' probability masks, an argmax, and a
loop over the kept queries with boolean masks of the full frame. Ours
(:func:`operators.segmentation.mask_classification.mask_classification_panoptic`) upsamples only
the kept queries, for the whole batch at once, and loops over counts. Both run on the same
outputs — Q = 100 queries, 19 classes, masks at stride 4, about 20 queries kept per frame, as a
trained model's — on this machine's device, and must give the same maps.
"""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from mask_models import mask2former_panoptic_inference
from operators.formats.categories import CITYSCAPES_CATEGORIES
from operators.segmentation.mask_classification import mask_classification_panoptic

SIZES = ((512, 1024), (1024, 2048))
BATCH, QUERIES, CLASSES, REPEATS = 4, 100, 19, 3
IS_THING = torch.tensor([c.isthing for c in CITYSCAPES_CATEGORIES])


def _outputs(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs like a trained model's: ~20 confident queries, sharp, mostly disjoint masks."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, QUERIES, CLASSES + 1, generator=generator)
    confident = torch.rand(BATCH, QUERIES, generator=generator) < 0.2
    logits[confident, torch.randint(0, CLASSES, (int(confident.sum()),), generator=generator)] += 12.0
    logits[~confident, CLASSES] += 6.0  # the others say "no object"
    h, w = height // 4, width // 4
    features = torch.randn(BATCH, 8, h // 8, w // 8, generator=generator)
    features = F.interpolate(features, size=(h, w), mode="bilinear", align_corners=False)
    affinity = torch.einsum("qd,bdhw->bqhw", torch.randn(QUERIES, 8, generator=generator), features)
    masks = (affinity - affinity.amax(dim=1, keepdim=True) + 0.3) * 8.0
    return logits.to(device), masks.to(device)


def _baseline(logits: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]):
    # Mask2Former upsamples every query's mask to the (padded) input, then crops per image
    full = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    thing = IS_THING.tolist()
    return [mask2former_panoptic_inference(logits[b], full[b, :, :size[0], :size[1]], thing)
            for b in range(len(logits))]


def _timed(fn, device: torch.device) -> tuple[float, object]:
    """Best of REPEATS: wall seconds on a GPU; CPU seconds of this process (all its threads) on
    the CPU, which a machine shared with other jobs does not inflate as it does wall time."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()  # warm-up
    best, result = float("inf"), None
    for _ in range(REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = clock()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - started)
    return best, result


@pytest.mark.benchmark
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_mask_classification_speed(size):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    logits, masks = _outputs(*size, device)
    with torch.inference_mode():
        base_s, base = _timed(lambda: _baseline(logits, masks, size), device)
        ours_s, ours = _timed(lambda: mask_classification_panoptic(logits, masks, size, size, IS_THING.to(device)),
                              device)
    kept = sum(len(rows) for _, rows in base) / BATCH
    for b, (ids, rows) in enumerate(base):
        assert torch.equal(ours.ids[b].int(), ids)
        assert [(i, c) for i, c, _ in ours.rows(b)] == rows
    print(f"\n{size[0]}x{size[1]}, {BATCH} frames, {QUERIES} queries, {kept:.1f} segments per frame, {device}, "
          f"torch threads {torch.get_num_threads()}")
    unit = "ms/frame" if device.type == "cuda" else "CPU ms/frame"
    print(f"  Mask2Former's per-image procedure  {1000 * base_s / BATCH:8.1f} {unit} (baseline)")
    print(f"  batched, kept queries only         {1000 * ours_s / BATCH:8.1f} {unit} "
          f"({base_s / ours_s:4.2f}× faster)")
