"""Evaluation speed at 1024×2048: annotated frames per second, PNG decode included.

Run with ``make bench`` (or ``.venv/bin/python -m pytest -q -s -m benchmark
tests/benchmarks/bench_evaluate.py``). One synthetic video (operators.synth, 6 annotated
frames, predictions from ``perturb_frame``) is written in the Cityscapes-VPS layout, then
in the same process:

* **decode only** — read both PNGs of every frame and decode their pixels with the fastest
  decoder installed (``pyspng.load``, libspng; ``cv2.imdecode`` without pyspng), no id
  conversion: the floor. ``cv2.imdecode`` alone (the decoder used before pyspng) is
  printed too, for comparison with earlier figures;
* **tubeflow** — :func:`operators.metrics.video.evaluate_video`: read, decode, contingency
  table, VPQ for k ∈ {0, 5, 10, 15} and STQ;
* **reference** — the pixel-stacking VPQ (:mod:`operators.metrics.reference`, the
  evaluator's procedure: stack each window, ``np.unique`` the voxels) on the same files,
  VPQ only, decoding with the same :func:`decode_panoptic_png` as tubeflow (fair: the
  ratio measures the metric, not the decoder).

tubeflow is timed a second time with pyspng hidden (OpenCV decodes every PNG, the decoder
before pyspng). It prints frames/s and the ratios (targets: ≥ 20× the reference, ≤ 2×
decode-only) and checks that tubeflow's sums equal the reference's.
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from operators import fs
from operators.formats import panoptic
from operators.formats.categories import CITYSCAPES_CATEGORIES, categories_by_id
from operators.formats.panoptic import PanopticFrame, decode_panoptic_png
from operators.formats.vps_layout import PredictionWriter, VpsImage, read_ground_truth, read_predictions, \
    write_ground_truth
from operators.metrics.reference import ReferenceFrame, reference_vpq_sums
from operators.metrics.video import EvaluationSettings, evaluate_video, plan_videos

FRAMES, HEIGHT, WIDTH = 6, 1024, 2048


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from operators.synth import SynthConfig, generate_video
    from operators.synth.perturb import perturb_frame

    root = tmp_path_factory.mktemp("bench_evaluate")
    cfg = SynthConfig(videos=1, frames=FRAMES, height=HEIGHT, width=WIDTH, seed=0, annotate_every=1)
    things = {c.id for c in CITYSCAPES_CATEGORIES if c.isthing}
    rng = np.random.default_rng(0)
    gt_frames = []
    with PredictionWriter(str(root / "pred")) as writer:
        for f in generate_video(cfg, 0):
            image = VpsImage(f.image_id, f"{f.image_id}.png", WIDTH, HEIGHT, f.video_id, 5 * f.frame_index)
            gt_frames.append((image, f.panoptic))
            prediction = perturb_frame(f.panoptic, rng, things)
            writer.add(image.id, PanopticFrame(prediction.ids, prediction.segments))
    write_ground_truth(str(root / "gt.json"), str(root / "gt"), gt_frames, CITYSCAPES_CATEGORIES)
    gt = read_ground_truth(str(root / "gt.json"), str(root / "gt"))
    return plan_videos(gt, read_predictions(str(root / "pred")))[0]


def _opencv_pixels(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _pixel_decoder():
    """(name, PNG bytes → pixels): the fastest decoder installed, no id conversion."""
    try:
        import pyspng
    except ImportError:
        return "cv2.imdecode", _opencv_pixels
    return "pyspng.load", pyspng.load


def _best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


@pytest.mark.benchmark
def test_evaluation_speed(corpus):
    cv2.setNumThreads(1)  # one core per task: the pipeline scales by running more tasks
    settings = EvaluationSettings(categories_by_id(CITYSCAPES_CATEGORIES))
    n = len(corpus.frames)

    decoder, decode_pixels = _pixel_decoder()

    def decode_only(decode=decode_pixels):
        for frame in corpus.frames:
            for uri in (frame.gt_uri, frame.pred_uri):
                decode(fs.read_bytes(uri))

    def reference():
        video = [ReferenceFrame(decode_panoptic_png(fs.read_bytes(f.gt_uri), f.gt_uri), f.gt_segments,
                                decode_panoptic_png(fs.read_bytes(f.pred_uri), f.pred_uri), f.pred_segments)
                 for f in corpus.frames]
        return reference_vpq_sums([video])

    evaluate_video(corpus, settings)  # warm-up: allocates the id lookup table once per thread
    t_decode, _ = _best_of(decode_only, 3)
    t_opencv, _ = _best_of(lambda: decode_only(_opencv_pixels), 3)
    t_ours, result = _best_of(lambda: evaluate_video(corpus, settings), 3)
    with pytest.MonkeyPatch.context() as without_pyspng:  # the previous decoder, for before/after
        without_pyspng.setattr(panoptic, "pyspng", None)
        t_ours_opencv, _ = _best_of(lambda: evaluate_video(corpus, settings), 3)
    t_reference, expected = _best_of(reference, 1)

    assert result.error is None
    ours = result.vpq.sums()
    assert set(ours) == set(expected)
    for key, (iou, tp, fp, fn) in expected.items():
        assert ours[key][1:] == (tp, fp, fn) and abs(ours[key][0] - iou) < 1e-9

    print(f"\nevaluation at {WIDTH}x{HEIGHT}, {n} annotated frames, k in {settings.ks} (+ STQ for tubeflow)")
    print(f"  decode only : {n / t_decode:7.2f} frames/s   ({decoder}; cv2.imdecode: {n / t_opencv:.2f} frames/s)")
    print(f"  tubeflow    : {n / t_ours:7.2f} frames/s   = {t_ours / t_decode:.2f}x the decode-only time")
    print(f"  tubeflow, OpenCV decoder (no pyspng): {n / t_ours_opencv:.2f} frames/s")
    print(f"  reference   : {n / t_reference:7.2f} frames/s")
    print(f"  speed-up vs reference: {t_reference / t_ours:.1f}x")
