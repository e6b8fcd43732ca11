"""The guided refinement of the semantic map (operators/segmentation/refine.py) against a slow
per-window reference of He et al.'s colour guided filter, and what it is for: class
boundaries that a coarse grid blurred move onto the image's colour edges."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from operators.segmentation.refine import box_mean, guided_filter, refine_semantic


def _reference_coefficients(guide: np.ndarray, source: np.ndarray, radius: int, eps: float):
    """He, Sun & Tang (TPAMI 2013) Eqs. 19–20, one window at a time: for every window ω_k
    (clipped at the borders) the ridge fit ``a_k = (Σ_k + εU)⁻¹ cov_k(I, p)``, ``b_k = p̄_k − a_kᵀĪ_k``,
    then Eq. 21's averages ``ā, b̄`` over the windows covering each pixel.
    ``guide (3, H, W)``, ``source (C, H, W)`` float64 → ``ā (C, 3, H, W)``, ``b̄ (C, H, W)``."""
    channels, height, width = source.shape
    a = np.zeros((channels, 3, height, width))
    b = np.zeros((channels, height, width))
    for y in range(height):
        for x in range(width):
            ys, xs = slice(max(0, y - radius), y + radius + 1), slice(max(0, x - radius), x + radius + 1)
            colours = guide[:, ys, xs].reshape(3, -1)
            mean_i = colours.mean(axis=1)
            sigma = (colours - mean_i[:, None]) @ (colours - mean_i[:, None]).T / colours.shape[1]
            for c in range(channels):
                values = source[c, ys, xs].reshape(-1)
                cov = (colours - mean_i[:, None]) @ (values - values.mean()) / values.size
                a[c, :, y, x] = np.linalg.solve(sigma + eps * np.eye(3), cov)
                b[c, y, x] = values.mean() - a[c, :, y, x] @ mean_i
    a_mean, b_mean = np.zeros_like(a), np.zeros_like(b)
    for y in range(height):
        for x in range(width):
            ys, xs = slice(max(0, y - radius), y + radius + 1), slice(max(0, x - radius), x + radius + 1)
            a_mean[:, :, y, x] = a[:, :, ys, xs].mean(axis=(2, 3))
            b_mean[:, y, x] = b[:, ys, xs].mean(axis=(1, 2))
    return a_mean, b_mean


def _reference_guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    a, b = _reference_coefficients(guide, source, radius, eps)
    return np.einsum("cihw,ihw->chw", a, guide) + b


def _random(shape, seed):
    return torch.from_numpy(np.random.default_rng(seed).random(shape)).float()


def test_box_mean_is_the_mean_over_each_clipped_window():
    x = _random((2, 3, 7, 9), 0)
    radius = 2
    expected = torch.zeros_like(x)
    for y in range(7):
        for c in range(9):
            window = x[..., max(0, y - radius):y + radius + 1, max(0, c - radius):c + radius + 1]
            expected[..., y, c] = window.mean(dim=(-2, -1))
    torch.testing.assert_close(box_mean(x, radius), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("radius,eps", [(1, 1e-2), (2, 1e-3), (3, 1e-4)])
def test_guided_filter_equals_the_per_window_reference(radius, eps):
    guide, source = _random((1, 3, 9, 11), 1), _random((1, 4, 9, 11), 2)
    expected = _reference_guided_filter(guide[0].double().numpy(), source[0].double().numpy(), radius, eps)
    got = guided_filter(guide, source, radius, eps)
    np.testing.assert_allclose(got[0].numpy(), expected, atol=2e-4)


def test_fast_guided_filter_fits_on_the_subsampled_images_and_applies_at_full_resolution():
    """Subsample s: coefficients of the reference fit on both images area-averaged by s (radius
    r/s), upsampled bilinearly, applied to the full-resolution guide."""
    guide, source = _random((1, 3, 12, 16), 3), _random((1, 2, 12, 16), 4)
    small_guide, small_source = F.avg_pool2d(guide, 2), F.avg_pool2d(source, 2)
    a, b = _reference_coefficients(small_guide[0].double().numpy(), small_source[0].double().numpy(), 2, 1e-3)

    def up(v):
        return F.interpolate(torch.from_numpy(v).float()[None], size=(12, 16), mode="bilinear", align_corners=False)[0]

    expected = sum(up(a[:, i]) * guide[0, i] for i in range(3)) + up(b)
    torch.testing.assert_close(guided_filter(guide, source, 4, 1e-3, subsample=2)[0], expected, atol=2e-4, rtol=1e-3)


def test_probabilities_stay_a_distribution_and_constants_stay_constant():
    guide = _random((2, 3, 16, 24), 5)
    probs = _random((2, 5, 16, 24), 6).mul(4).softmax(dim=1)
    for subsample in (1, 2, 4):
        refined = guided_filter(guide, probs, 4, 1e-5, subsample)
        torch.testing.assert_close(refined.sum(dim=1), torch.ones(2, 16, 24), atol=1e-3, rtol=0)  # float32, ε 1e-5
        flat = guided_filter(guide, torch.full((2, 1, 16, 24), 0.3), 4, 1e-5, subsample)
        torch.testing.assert_close(flat, torch.full_like(flat, 0.3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("edge", [22, 23, 25, 26])
def test_a_blurred_class_boundary_moves_onto_the_colour_edge(edge):
    """Two textured surfaces (red-ish, grey) meet at column ``edge``. The class probabilities
    come from a stride-4 grid whose boundary is at x = 24, upsampled bilinearly: a ramp, one or
    two pixels off the true edge. Refined, a boundary 1 px off lands exactly on the colour
    edge and one 2 px off keeps at most a tenth of its wrong pixels."""
    height, width = 32, 48
    rng = np.random.default_rng(7)
    image = np.where(np.arange(width)[None, :, None] < edge, [0.7, 0.3, 0.25], [0.45, 0.45, 0.45])
    image = image + rng.normal(0, 0.02, (height, width, 3))
    guide = torch.from_numpy(image.transpose(2, 0, 1)).float()[None]
    coarse = torch.zeros(1, 2, height // 4, width // 4)
    coarse[:, 0, :, :6] = 4.0  # class 0 on the first six cells (x < 24), class 1 after
    coarse[:, 1] = 4.0 - coarse[:, 0]
    logits = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    truth = np.broadcast_to(np.arange(width)[None, :] >= edge, (height, width)).astype(int)
    wrong_before = (logits.argmax(dim=1)[0].numpy() != truth).sum()
    assert wrong_before == abs(edge - 24) * height
    refined = refine_semantic(logits, guide, radius=6, eps=1e-5, subsample=2)
    wrong_after = (refined.argmax(dim=1)[0].numpy() != truth).sum()
    assert wrong_after == 0 if abs(edge - 24) == 1 else wrong_after <= wrong_before / 10
    # log-probabilities: the post-processing's softmax gives back the filtered distribution
    torch.testing.assert_close(refined.softmax(dim=1), refined.exp() / refined.exp().sum(dim=1, keepdim=True))


def test_a_batch_is_refined_as_its_frames_are_one_by_one():
    guide, logits = _random((3, 3, 16, 24), 8), _random((3, 5, 16, 24), 9).mul(6)
    batched = refine_semantic(logits, guide, 6, 1e-5, 2)
    for i in range(3):
        torch.testing.assert_close(batched[i:i + 1], refine_semantic(logits[i:i + 1], guide[i:i + 1], 6, 1e-5, 2))
    assert batched.shape == logits.shape and torch.isfinite(batched).all()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="must divide the frame size 15x16"):
        guided_filter(torch.zeros(1, 3, 15, 16), torch.zeros(1, 2, 15, 16), 2, 1e-3, subsample=2)
    with pytest.raises(ValueError, match=r"guide \(1, 1, 8, 8\) must be \(B, 3, H, W\)"):
        guided_filter(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 8), 2, 1e-3)
