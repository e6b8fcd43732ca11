"""Training losses of the built-in model: panoptic (per frame) and temporal (per frame pair).

Panoptic — Panoptic-DeepLab (Cheng et al., CVPR 2020), Sec. 3.4:
``L = λ_sem·L_sem + λ_heatmap·L_heatmap + λ_offset·L_offset`` with a bootstrapped
cross-entropy ``L_sem`` (per-pixel CE, optionally weighted up on small instances, then the
mean over the hardest fraction of pixels), a weighted MSE on the center heatmap (λ = 200)
and an L1 loss on the offsets of thing pixels. The terms are computed on targets sampled at
the centres of the cells of the heads' stride — the semantic CE at half that stride, on
logits upsampled ×2 (``semantic_upsample``): upsampling the 19 logit maps to full
resolution (×16 the pixels) for the loss, and its backward, were a sizeable share of a CPU step.

Temporal — SiamTrack (Woo et al., "Learning to Associate Every Segment for Video Panoptic
Segmentation", CVPR 2021), trained on pairs (t, t') of frames of one video, for *every*
GT segment (stuff, things, crowd), with embeddings ``e_i = MaskPool(E, M_i)`` (the
L2-normalised mean of the embedding map E under mask M_i):

* segment-level contrastive loss — each segment i of frame t must pick out its own
  continuation among all segments j of frame t' (InfoNCE with temperature τ):
  ``L_con = −(1/|P|) Σ_{i∈P} log( exp(e_i^t·e_i^{t'}/τ) / Σ_j exp(e_i^t·e_j^{t'}/τ) )``,
  P = segments present in both frames, symmetrised over (t → t', t' → t);
* tube-matching dice loss — every pixel p of frame t' is softly assigned to the segments of
  frame t, ``m̂_i(p) = softmax_i(e_i^t·Ê^{t'}(p)/τ)`` (Ê: per-pixel L2-normalised
  embeddings), and the propagated masks must match the GT masks of the same tubes:
  ``L_dice = (1/|P|) Σ_{i∈P} (1 − 2Σ_p m̂_i M_i^{t'} / (Σ_p m̂_i + Σ_p M_i^{t'}))``, over pixels of
  t' whose segment exists in t, symmetrised.

This is our reading of the paper's segment-wise and pixel-tube objectives, written out
here so the equations the code implements are explicit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from operators.segmentation.postprocess import mask_pool
from operators.training.targets import IGNORE, PanopticTargets


@dataclass(frozen=True)
class LossWeights:
    semantic: float = 1.0
    center: float = 200.0  # Panoptic-DeepLab's λ_heatmap
    offset: float = 0.02   # L1 in input pixels (paper: 0.01); 0.05 made it the largest term, starving L_sem
    contrastive: float = 0.25  # SiamTrack terms: kept, but below the panoptic terms
    tube_dice: float = 0.25
    temperature: float = 0.1
    hard_pixel_ratio: float = 0.2
    # Panoptic-DeepLab weights the CE of small-instance pixels by 3. Session-2 pilots of 600
    # steps starved the stuff classes with it (held-out PQ 8.9 with 3 vs 15.6 with 1), but they
    # called "small" < 64² px — nearly every instance at 256×512. Scaled to the frame (< 16² px,
    # ``TrainConfig.small_instance_area``), 11000 steps (session 6; model card): tuning seed
    # 59.0 vs 58.7 with flip, 60.3 vs 59.2 with flip and the half-cell shift; held-out 59.1 vs
    # 58.8 with both. Shipped.
    small_instance: float = 3.0
    # Panoptic-DeepLab averages the offset L1 over thing pixels, so a truck of 4000 px counts
    # 50 times a pedestrian of 80 px. ``balanced_offsets`` averages each instance's mean L1
    # instead, so every instance counts the same (small things are most of the instances).
    # Off: a 10000-step pilot lost PQ on seed 555000 (51.4 vs 53.6; riders and persons gained,
    # buses and trains lost 16-18 points: their offsets train worse).
    balanced_offsets: bool = False
    # The semantic CE on logits upsampled (bilinear, as at inference) by this factor, targets
    # sampled at the finer cells: thin and small segments (poles are 2-7 px wide) are seen by
    # four times as many loss pixels as at the heads' stride (1). Pilots of 10000 steps, tuning
    # seed 555000: PQ 55.8 with 2 vs 53.6 with 1, for 22 % more time per step.
    semantic_upsample: int = 2

    def __post_init__(self) -> None:
        if int(self.semantic_upsample) != self.semantic_upsample or self.semantic_upsample < 1:
            raise ValueError(f"semantic_upsample must be a whole factor >= 1, got {self.semantic_upsample!r}")


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, hard_ratio: float,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bootstrapped CE: mean over the ``hard_ratio`` hardest valid pixels of the (weighted) CE.
    ``logits (B, C, H, W)``, ``target (B, H, W)`` with IGNORE, ``weight (B, H, W)`` or None."""
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    if weight is not None:
        per_pixel = per_pixel * weight
    per_pixel = per_pixel.flatten()
    valid = per_pixel[(target != IGNORE).flatten()]
    if valid.numel() == 0:
        return logits.sum() * 0.0
    k = max(1, int(hard_ratio * valid.numel()))
    return valid.topk(k).values.mean()


def center_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted MSE over all pixels (crowd weighted 0). ``(B, 1, H, W)`` each."""
    return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


def offset_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """L1 over non-crowd thing pixels. ``pred, target (B, 2, H, W)``, ``weight (B, 1, H, W)``."""
    return ((pred - target).abs() * weight).sum() / weight.sum().clamp_min(1.0)


def balanced_offset_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                         instance_ids: torch.Tensor) -> torch.Tensor:
    """Mean over thing instances of each instance's mean L1 (every instance counts the same).
    ``pred, target (B, 2, H, W)``, ``weight (B, 1, H, W)``, ``instance_ids (B, H, W)`` GT ids."""
    mask = weight[:, 0] > 0
    if not mask.any():
        return pred.sum() * 0.0
    frame = torch.arange(mask.shape[0], device=mask.device)[:, None, None].expand_as(mask)
    # one key per (frame, instance): the two frames of a pair share their GT ids
    keys = frame[mask] * (1 << 32) + instance_ids[mask]
    _, instance, pixels = torch.unique(keys, return_inverse=True, return_counts=True)
    error = (pred - target).abs().sum(dim=1)[mask]
    per_instance = torch.zeros(pixels.numel(), dtype=error.dtype, device=error.device).scatter_add_(0, instance, error)
    return (per_instance / pixels).mean()


def _segment_masks(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids (h, w)`` → (segment ids (N,), one-hot masks (N, h, w) float), VOID excluded."""
    present = torch.unique(ids)
    present = present[present != 0]
    return present, (ids.unsqueeze(0) == present[:, None, None]).float()


def _contrastive_direction(anchor: torch.Tensor, other: torch.Tensor, positive: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """InfoNCE of anchors (Na, D) against others (Nb, D); ``positive (Na,)`` index in others or −1."""
    has = positive >= 0
    if not has.any():
        return anchor.sum() * 0.0
    logits = anchor[has] @ other.T / temperature
    return F.cross_entropy(logits, positive[has])


def _dice_direction(segments: torch.Tensor, pixels: torch.Tensor, ids_from: torch.Tensor, masks_to: torch.Tensor,
                    ids_to: torch.Tensor, temperature: float) -> torch.Tensor:
    """Propagate the segments of one frame onto the pixels of the other and score with dice.

    ``segments (Na, D)`` embeddings of frame t; ``pixels (D, h, w)`` normalised embeddings of
    frame t'; ``masks_to (Nb, h, w)`` GT masks of t' with ids ``ids_to``.
    """
    match = (ids_to[:, None] == ids_from[None, :])  # (Nb, Na)
    shared = match.any(dim=1)
    if not shared.any():
        return segments.sum() * 0.0
    soft = torch.softmax(torch.einsum("nd,dhw->nhw", segments, pixels) / temperature, dim=0)  # (Na, h, w)
    valid = masks_to[shared].sum(dim=0)  # pixels of t' whose segment exists in t
    target = masks_to[shared]  # (P, h, w)
    predicted = soft[match[shared].float().argmax(dim=1)] * valid  # the same tubes in t
    inter = (predicted * target).sum(dim=(1, 2))
    dice = 1 - 2 * inter / (predicted.sum(dim=(1, 2)) + target.sum(dim=(1, 2))).clamp_min(1e-6)
    return dice.mean()


def temporal_losses(embedding: torch.Tensor, segment_ids: torch.Tensor, temperature: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """SiamTrack losses of a batch laid out as pairs: frames ``[0, B/2)`` are t, ``[B/2, B)`` t'.

    ``embedding (B, D, h, w)`` at the head's stride; ``segment_ids (B, H, W)`` GT ids at input
    resolution (sampled at the centres of the stride cells). Returns (L_con, L_dice).
    """
    batch, _, height, width = embedding.shape
    stride = segment_ids.shape[-1] // width
    ids = segment_ids[:, stride // 2::stride, stride // 2::stride][:, :height, :width]
    pixels = F.normalize(embedding, dim=1)
    half = batch // 2
    con, dice = [], []
    for a, b in zip(range(half), range(half, 2 * half)):
        ids_a, masks_a = _segment_masks(ids[a])
        ids_b, masks_b = _segment_masks(ids[b])
        if ids_a.numel() == 0 or ids_b.numel() == 0:
            continue
        e_a = mask_pool(embedding[a:a + 1], masks_a[None])[0]
        e_b = mask_pool(embedding[b:b + 1], masks_b[None])[0]
        eq = ids_a[:, None] == ids_b[None, :]
        pos_ab = torch.where(eq.any(1), eq.float().argmax(1), -1)
        pos_ba = torch.where(eq.any(0), eq.float().argmax(0), -1)
        con.append(0.5 * (_contrastive_direction(e_a, e_b, pos_ab, temperature)
                          + _contrastive_direction(e_b, e_a, pos_ba, temperature)))
        dice.append(0.5 * (_dice_direction(e_a, pixels[b], ids_a, masks_b, ids_b, temperature)
                           + _dice_direction(e_b, pixels[a], ids_b, masks_a, ids_a, temperature)))
    if not con:
        zero = embedding.sum() * 0.0
        return zero, zero
    return torch.stack(con).mean(), torch.stack(dice).mean()


def at_stride(targets: PanopticTargets, size: tuple[int, int]) -> PanopticTargets:
    """Targets at the heads' resolution ``size = (h, w)``: the input pixel at the centre of each
    stride cell (offsets stay in input pixels). ``segment_ids`` are kept at input resolution
    (the temporal losses sample them themselves)."""
    if targets.semantic.shape[-1] // size[1] == 1:
        return targets
    cells = {name: cell_centres(getattr(targets, name), size)
             for name in targets.__dataclass_fields__ if name != "segment_ids"}
    return PanopticTargets(segment_ids=targets.segment_ids, **cells)


def cell_centres(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``values (..., H, W)`` at input resolution → ``(..., h, w)``: the pixel at the centre of
    each stride cell, stride = W // w."""
    height, width = size
    stride = values.shape[-1] // width
    return values[..., stride // 2::stride, stride // 2::stride][..., :height, :width]


def total_loss(outputs: dict[str, torch.Tensor], targets: PanopticTargets, weights: LossWeights = LossWeights()
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """All losses of a pair-ordered batch → (weighted sum, each term as a float for logging).

    The panoptic terms compare the heads (stride s) with the targets sampled at the centres
    of the s×s cells (:func:`at_stride`); the semantic logits may have a finer stride of their own.
    """
    t = at_stride(targets, outputs["center"].shape[-2:])
    logits = outputs["semantic"]  # at the heads' stride, or finer (PanopticNetConfig.semantic_stride)
    if weights.semantic_upsample > 1:
        logits = F.interpolate(logits, scale_factor=weights.semantic_upsample, mode="bilinear", align_corners=False)
    ts = at_stride(targets, logits.shape[-2:])
    pixel_weight = 1 + (weights.small_instance - 1) * ts.small_instance if weights.small_instance != 1 else None
    if weights.balanced_offsets:
        ids = cell_centres(targets.segment_ids, t.offset.shape[-2:])
        offset = balanced_offset_loss(outputs["offset"], t.offset, t.offset_weight, ids)
    else:
        offset = offset_loss(outputs["offset"], t.offset, t.offset_weight)
    terms = {
        "semantic": semantic_loss(logits, ts.semantic, weights.hard_pixel_ratio, pixel_weight),
        "center": center_loss(outputs["center"], t.center, t.center_weight),
        "offset": offset,
    }
    terms["contrastive"], terms["tube_dice"] = temporal_losses(outputs["embedding"], targets.segment_ids,
                                                               weights.temperature)
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}
