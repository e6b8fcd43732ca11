"""Panoptic post-processing of the bottom-up heads, batched in torch (runs on GPU or CPU).

Panoptic-DeepLab (Cheng et al., CVPR 2020), Sec. 3.3:

1. *Center selection*: keyed NMS on the center heatmap — a pixel is a center when it equals
   the max-pool of its k×k neighbourhood and exceeds a threshold; keep the top-k.
2. *Grouping*: every pixel predicted as a thing class votes for the center closest to
   where its offset points: ``k̂(x) = argmin_k ‖C_k − (x + O(x))‖²`` (Eq. 1 of the paper).
3. *Merge*: each instance takes the majority semantic class of its pixels; stuff segments
   are the semantic regions of stuff classes; segments smaller than an area threshold
   become VOID. With ``thing_groups`` (e.g. humans, cars, large vehicles, two-wheelers) the
   vote is held within each group: the pixels of one center that belong to different groups
   become separate instances (our addition; with no groups this is the paper's step).

Every frame of the batch goes through the same tensor operations; only the final, tiny
list of segments is built per frame. Scores follow Panoptic-DeepLab: a thing's score is
its center heatmap value × the mean semantic probability of its class over its mask; a
stuff segment's score is that mean probability alone. Each segment also gets the
mask-pooled, L2-normalised embedding of SiamTrack's MaskPool (Woo et al., CVPR 2021).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from operators.formats.panoptic import PanopticFrame, SegmentInfo
from operators.segmentation.spec import PostprocessConfig

LABEL_DIVISOR = 1000  # segment id = LABEL_DIVISOR · (category_id + 1) + k, as in the synthetic GT


@dataclass
class FrameSegments:
    """The panoptic result of one frame.

    ``ids``: ``(H, W) int32`` panoptic ids (0 = VOID); ``segments``: their segments_info with
    ``score``; ``embeddings``: ``(N, D) float32`` L2-normalised, row i belongs to ``segments[i]``.
    """

    ids: np.ndarray
    segments: list[SegmentInfo]
    embeddings: np.ndarray

    def to_panoptic_frame(self) -> PanopticFrame:
        return PanopticFrame(self.ids, list(self.segments))


def mask_pool(embedding: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """SiamTrack's MaskPool: the L2-normalised mean embedding under each soft or hard mask.

    ``embedding (B, D, H, W)``, ``masks (B, N, H, W)`` (0/1 or weights) → ``(B, N, D)``.
    Differentiable (the training losses use it on ground-truth masks).
    """
    sums = torch.einsum("bdhw,bnhw->bnd", embedding, masks.to(embedding.dtype))
    means = sums / masks.sum(dim=(2, 3)).clamp_min(eps).unsqueeze(-1).to(embedding.dtype)
    return F.normalize(means, dim=-1, eps=eps)


def first_argmax(values: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``values.argmax(dim)`` — the first index of the maximum — computed as a max and one
    comparison per index. The same result, several times faster on the CPU for a (B, C, H, W)
    tensor, where torch's argmax along the strided class dimension took ~60-110 ms per
    512×1024 frame of 19 classes (a quarter of the whole post-processing)."""
    top = values.amax(dim=dim)
    index = torch.zeros(top.shape, dtype=torch.long, device=values.device)
    for i in range(values.shape[dim] - 1, -1, -1):  # the lowest index written last wins ties
        index.masked_fill_(values.select(dim, i) == top, i)
    return index


def find_centers(center: torch.Tensor, threshold: float, nms_kernel: int, top_k: int):
    """Keyed NMS by max-pooling. ``center (B, 1, H, W)`` →
    ``scores (B, K)``, ``ys (B, K)``, ``xs (B, K)`` (long), ``valid (B, K)`` bool, K = min(top_k, H·W)."""
    height, width = center.shape[-2:]
    # A plateau (e.g. a peak upsampled bilinearly from stride 4 is a 2×2 tie) would give one
    # center per tied pixel; a tiny raster-order key makes the first pixel the only maximum.
    # (float64: steps of 1e-12 are exact there; at most 1e-12 · H·W ≈ 2e-6 at 1024×2048.)
    key = center.double() - torch.arange(height * width, device=center.device, dtype=torch.float64).view(
        1, 1, height, width) * 1e-12
    # k×k max = k×1 max then 1×k max (exactly: max is associative, padding is −inf): 2k instead
    # of k² comparisons per pixel, 40 → 25 ms at 512×1024 for k = 7 on one core.
    half = nms_kernel // 2
    pooled = F.max_pool2d(F.max_pool2d(key, (nms_kernel, 1), stride=1, padding=(half, 0)),
                          (1, nms_kernel), stride=1, padding=(0, half))
    peaks = torch.where((key == pooled) & (center > threshold), center, torch.zeros_like(center))
    flat = peaks.flatten(1)
    scores, index = flat.topk(min(top_k, flat.shape[1]), dim=1)
    return scores, index // width, index % width, scores > threshold


def group_pixels(offset: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, valid: torch.Tensor,
                 pixel_mask: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """Assign every masked (thing) pixel to the center nearest to where its offset points (Eq. 1).

    ``offset (B, 2, H, W)`` as (dy, dx); centers ``ys, xs, valid (B, K)`` sorted by score (valid
    first, as :func:`find_centers` returns them); ``pixel_mask (B, H, W) bool`` →
    ``(B, H, W) long`` center index in [0, K), −1 outside the mask or when the frame has no
    valid center. Only masked pixels are compared with only the valid centers, in chunks, so
    memory is O(chunk · K).
    """
    batch, _, height, width = offset.shape
    nearest = torch.full((batch, height, width), -1, dtype=torch.long, device=offset.device)
    count = int(valid.sum(dim=1).max()) if valid.numel() else 0
    if count == 0:
        return nearest
    centers = torch.stack([ys[:, :count], xs[:, :count]], dim=-1).float()  # (B, K', 2)
    far = torch.where(valid[:, :count], 0.0, float("inf"))  # (B, K')
    b, y, x = pixel_mask.nonzero(as_tuple=True)
    for start in range(0, b.numel(), chunk):
        bb, yy, xx = b[start:start + chunk], y[start:start + chunk], x[start:start + chunk]
        target = torch.stack([yy + offset[bb, 0, yy, xx].float(), xx + offset[bb, 1, yy, xx].float()], dim=-1)
        distance = ((centers[bb] - target[:, None, :]) ** 2).sum(dim=-1) + far[bb]  # (n, K')
        choice = distance.argmin(dim=1)
        choice = torch.where(torch.isfinite(distance.gather(1, choice[:, None]).squeeze(1)), choice, -1)
        nearest[bb, yy, xx] = choice
    return nearest


def average_with_mirror(heads: dict[str, torch.Tensor], mirrored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Horizontal-flip test-time augmentation: the mean of a batch's heads and of the heads of
    its mirror image, mirrored back (a pixel's offset to its center then points the other way
    in x, so their dx changes sign). Every head is ``(B, C, h, w)`` at an integer stride of an
    input whose width is a multiple of it, so mirroring the grid maps cell to cell exactly.
    The semantic logits are averaged as logits (the geometric mean of the two softmaxes).
    Returns float32 heads."""
    out = {}
    for key, value in heads.items():
        back = mirrored[key].float().flip(-1)
        if key == "offset":
            back = back * torch.tensor([1.0, -1.0], device=back.device).view(1, 2, 1, 1)
        out[key] = (value.float() + back) / 2
    return out


def translate_images(images: torch.Tensor, shift: int) -> torch.Tensor:
    """The batch ``(B, C, H, W)`` with its content moved ``shift`` pixels down and right (the
    top rows and left columns replicated), for :func:`average_with_shifted`."""
    return F.pad(images, (shift, 0, shift, 0), mode="replicate")[..., :images.shape[-2], :images.shape[-1]]


def average_with_shifted(heads: dict[str, torch.Tensor], shifted: dict[str, torch.Tensor], shift: int,
                         size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Sub-cell shift test-time augmentation: the mean of a batch's heads and of the heads of
    the same batch moved by ``shift`` px down and right (:func:`translate_images`), moved back.

    A stride-s network sees a frame through a grid of s×s cells; the input moved by half a cell
    is seen through the grid in between, so the two sets of heads together sample the frame
    twice as finely — what thin stuff (poles) and small things, a cell or two wide, lack. Both
    are upsampled (bilinear, as the post-processing would) to the input ``size`` ``(H, W)``,
    where the move back is exact, the shifted one moved up-left by ``shift`` px (its last rows
    and columns replicated), and averaged there. (Averaging on the stride-s/2 grid instead and
    upsampling after — less memory — scored 0.2–0.6 PQ lower on the tuning seed: upsampling in
    two bilinear steps blurs.) Offsets are vectors, unchanged by a translation.
    Returns float32 heads at the input resolution."""
    here, there = upsample_outputs(heads, size), upsample_outputs(shifted, size)
    return {key: (value + F.pad(there[key], (0, shift, 0, shift), mode="replicate")[..., shift:, shift:]) / 2
            for key, value in here.items()}


def upsample_outputs(outputs: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Bilinear upsampling of every head to the input size. Offsets are in input pixels
    already, so their values are not rescaled."""
    return {key: F.interpolate(value.float(), size=size, mode="bilinear", align_corners=False)
            if value.shape[-2:] != torch.Size(size) else value.float() for key, value in outputs.items()}


def panoptic_postprocess(outputs: dict[str, torch.Tensor], size: tuple[int, int], thing_ids: tuple[int, ...],
                         config: PostprocessConfig = PostprocessConfig(),
                         thing_groups: Sequence[Sequence[int]] = ()) -> list[FrameSegments]:
    """Heads of a batch (any stride) → one :class:`FrameSegments` per frame at ``size = (H, W)``.

    ``thing_groups``: sets of thing classes that may share an instance; one center's pixels of
    different groups become different instances (thing classes in no group form one more
    group). Empty: Panoptic-DeepLab's single majority vote per center. Small things that sit
    together — a rider on its bicycle, a pedestrian in front of a car, a car behind a bus —
    often get one center from a stride-4 heatmap; the groups return them apart (tuning seed
    555000: Cityscapes' human/vehicle categories PQ 52.4 → 54.0; ``CITYSCAPES_THING_GROUPS``,
    which also split cars, large vehicles and two-wheelers, a further +1.2; model card).
    """
    full = upsample_outputs(outputs, size)
    probs = full["semantic"].contiguous().softmax(dim=1)  # (B, C, H, W); NCHW: softmax over C is faster there
    batch, num_classes = probs.shape[:2]
    semantic = first_argmax(probs, dim=1)  # (B, H, W)
    is_thing_class = torch.zeros(num_classes, dtype=torch.bool, device=probs.device)
    is_thing_class[list(thing_ids)] = True

    scores, ys, xs, valid = find_centers(full["center"], config.center_threshold, config.nms_kernel, config.top_k)
    thing_pixel = is_thing_class[semantic]
    nearest = group_pixels(full["offset"], ys, xs, valid, thing_pixel)
    if thing_groups:  # one instance per (center, group): center k, group g → instance k·G + g
        group_of_class = torch.zeros(num_classes, dtype=torch.long, device=probs.device)
        for g, members in enumerate(thing_groups, start=1):
            group_of_class[list(members)] = g
        num_groups = len(thing_groups) + 1
        nearest = torch.where(nearest >= 0, nearest * num_groups + group_of_class[semantic], nearest)
        scores = scores.repeat_interleave(num_groups, dim=1)
    num_centers = scores.shape[1]

    # One "slot" per possible segment: stuff class c → slot c; instance k → slot C + k; VOID → last.
    void_slot = num_classes + num_centers
    slot = torch.where(thing_pixel, num_classes + nearest, semantic)
    slot = torch.where(thing_pixel & (nearest < 0), torch.full_like(slot, void_slot), slot).flatten(1)

    # Majority vote of the semantic class inside each instance (Panoptic-DeepLab Sec. 3.3).
    votes = torch.zeros(batch, void_slot + 1, num_classes, device=probs.device)
    votes.view(batch, -1).scatter_add_(1, slot * num_classes + semantic.flatten(1), torch.ones_like(slot, dtype=votes.dtype))
    slot_class = torch.cat([torch.arange(num_classes, device=probs.device).expand(batch, -1),
                            votes[:, num_classes:void_slot].argmax(dim=-1),
                            torch.zeros(batch, 1, dtype=torch.long, device=probs.device)], dim=1)
    area = votes.sum(dim=-1)  # (B, S+1)

    pixel_prob = probs.flatten(2).gather(1, slot_class.gather(1, slot).unsqueeze(1)).squeeze(1)
    mean_prob = torch.zeros_like(area).scatter_add_(1, slot, pixel_prob) / area.clamp_min(1)
    center_score = torch.cat([torch.ones(batch, num_classes, device=probs.device), scores.float(),
                              torch.zeros(batch, 1, device=probs.device)], dim=1)
    slot_score = mean_prob * center_score
    min_area = torch.full((void_slot + 1,), float(config.stuff_area), device=probs.device)
    min_area[num_classes:] = config.thing_area
    keep = (area >= min_area) & (area > 0)
    keep[:, void_slot] = False

    embedding_dim = full["embedding"].shape[1]
    pooled = torch.zeros(batch, void_slot + 1, embedding_dim, device=probs.device)
    per_pixel = full["embedding"].permute(0, 2, 3, 1).reshape(batch, size[0] * size[1], embedding_dim)  # a view when NHWC
    pooled.scatter_add_(1, slot.unsqueeze(-1).expand(-1, -1, embedding_dim), per_pixel)
    pooled = F.normalize(pooled, dim=-1)

    height, width = size
    xs_pix = torch.arange(width, device=probs.device).repeat(height).expand(batch, -1)  # x of each flat pixel
    ys_pix = torch.arange(height, device=probs.device).repeat_interleave(width).expand(batch, -1)
    big = size[0] * size[1]
    x_min = torch.full_like(area, big, dtype=torch.long).scatter_reduce(1, slot, xs_pix, "amin")
    y_min = torch.full_like(area, big, dtype=torch.long).scatter_reduce(1, slot, ys_pix, "amin")
    x_max = torch.full_like(area, -1, dtype=torch.long).scatter_reduce(1, slot, xs_pix, "amax")
    y_max = torch.full_like(area, -1, dtype=torch.long).scatter_reduce(1, slot, ys_pix, "amax")

    stats = [t.cpu().numpy() for t in (keep, slot_class, area, slot_score, x_min, y_min, x_max, y_max)]
    pooled_np, slot_np = pooled.cpu().numpy(), slot.cpu().numpy()
    is_thing_np = is_thing_class.cpu().numpy()
    return [_frame_segments(b, stats, pooled_np[b], slot_np[b].reshape(size), num_classes, is_thing_np)
            for b in range(batch)]


def _frame_segments(b: int, stats: list[np.ndarray], pooled: np.ndarray, slot: np.ndarray, num_classes: int,
                    is_thing: np.ndarray) -> FrameSegments:
    """Number the kept slots of frame ``b`` (things by decreasing score) and paint the id map."""
    keep, slot_class, area, score, x0, y0, x1, y1 = (s[b] for s in stats)
    kept = np.flatnonzero(keep)
    kept = sorted(kept, key=lambda s: (s >= num_classes, -score[s]))  # stuff first, then things by score
    lut = np.zeros(len(keep), np.int32)
    segments, rows, next_k = [], [], {}
    for s in kept:
        category = int(slot_class[s])
        if is_thing[category]:
            next_k[category] = next_k.get(category, 0) + 1
            seg_id = LABEL_DIVISOR * (category + 1) + next_k[category]
        else:
            seg_id = LABEL_DIVISOR * (category + 1)
        lut[s] = seg_id
        segments.append(SegmentInfo(seg_id, category, int(area[s]),
                                    (int(x0[s]), int(y0[s]), int(x1[s] - x0[s] + 1), int(y1[s] - y0[s] + 1)),
                                    0, float(score[s])))
        rows.append(pooled[s])
    embeddings = np.stack(rows).astype(np.float32) if rows else np.zeros((0, pooled.shape[1]), np.float32)
    return FrameSegments(lut[slot], segments, embeddings)
