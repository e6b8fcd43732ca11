"""Panoptic inference of mask-classification models, batched in torch (GPU or CPU).

The MaskFormer family (MaskFormer, Mask2Former, OneFormer, kMaX-DeepLab) predicts a fixed set
of Q queries per image, each with class logits over K classes plus "no object" and a mask.
This module turns such outputs into a finished panoptic map exactly as Mask2Former's
``panoptic_inference`` does (Cheng et al., "Masked-attention Mask Transformer for Universal
Image Segmentation", CVPR 2022; ``mask_former_model.py`` of facebookresearch/Mask2Former):

1. ``scores, labels = softmax(class logits).max(-1)``; keep the queries whose label is not
   "no object" (the last column) and whose score exceeds ``object_mask_threshold`` (0.8);
2. mask probabilities = sigmoid of the mask logits upsampled bilinearly (``align_corners``
   false) to the padded input size, cropped back to the frame;
3. each pixel goes to the kept query with the highest ``score × mask probability`` (the first
   one in query order on a tie);
4. the kept queries are taken in order: a query is dropped when the pixels it wins are fewer
   than ``overlap_threshold`` (0.8) times the pixels where its own probability is ≥ 0.5, or
   when it wins no pixel at ≥ 0.5; else it takes the pixels it wins where its own probability
   is ≥ 0.5. Stuff queries of one class merge into one segment (the first one's); things stay
   separate instances. Segments are numbered 1, 2, … in that order.

Everything up to step 4's bookkeeping is one set of tensor operations over the whole batch;
step 4 needs only three counts per query (pixels won, pixels ≥ 0.5, pixels won at ≥ 0.5), so
its loop runs over Q small numbers per frame, not over pixels. Only the kept queries' masks
are upsampled (Mask2Former upsamples all Q = 100–200 of them), which bounds the memory by
the few objects a frame holds.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from operators.errors import FormatMismatchError
from operators.segmentation.panoptic_map import PanopticMaps, check_stride
from operators.segmentation.postprocess import first_argmax
from operators.segmentation.spec import MaskClassificationConfig

# The output names of the contract: ours (Mask2Former's own) and Hugging Face transformers'.
OUTPUT_NAMES = (("pred_logits", "pred_masks"), ("class_queries_logits", "masks_queries_logits"))


def validate_mask_outputs(outputs: dict[str, torch.Tensor], images: torch.Tensor, num_classes: int,
                          where: str) -> dict[str, torch.Tensor]:
    """Check ``pred_logits (B, Q, K+1)``, ``pred_masks (B, Q, h, w)`` (an integer stride of the
    padded input) and the optional ``embedding (B, D, h', w')``. Returns them; raises
    :class:`FormatMismatchError` naming ``where``."""
    batch, _, height, width = images.shape
    logits, masks = outputs["pred_logits"], outputs["pred_masks"]
    for key, value, dims in (("pred_logits", logits, 3), ("pred_masks", masks, 4)):
        if not isinstance(value, torch.Tensor) or value.dim() != dims or value.shape[0] != batch:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            form = "(B, Q, K+1)" if dims == 3 else "(B, Q, h, w)"
            raise FormatMismatchError(where, f"output {key!r} must be a {form} tensor with B={batch}, got {shape}")
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise FormatMismatchError(where, f"output {key!r} must be finite floating point")
    if logits.shape[2] != num_classes + 1:
        raise FormatMismatchError(where, f"output 'pred_logits' has {logits.shape[2]} columns; the model's "
                                         f"{num_classes} classes need {num_classes + 1} (the last one: no object)")
    if masks.shape[1] != logits.shape[1]:
        raise FormatMismatchError(where, f"'pred_logits' has {logits.shape[1]} queries, 'pred_masks' "
                                         f"{masks.shape[1]}")
    check_stride("pred_masks", masks, (height, width), where)
    out = {"pred_logits": logits, "pred_masks": masks}
    if "embedding" in outputs:
        out["embedding"] = check_stride("embedding", outputs["embedding"], (height, width), where, batch)
    return out


def mask_classification_panoptic(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                                 padded_size: tuple[int, int], size: tuple[int, int], is_thing: torch.Tensor,
                                 config: MaskClassificationConfig = MaskClassificationConfig()) -> PanopticMaps:
    """Mask2Former's panoptic inference (module doc) for a batch.

    ``class_logits (B, Q, K+1)``, ``mask_logits (B, Q, h, w)`` at an integer stride of
    ``padded_size (H', W')``; ``size (H, W)`` the frames inside it; ``is_thing (K,) bool``.
    Returns :class:`PanopticMaps` with ids 1, 2, … and each segment's class and score (the
    class probability of the query that made it; for merged stuff, the first one's).
    """
    batch, queries, columns = class_logits.shape
    device = class_logits.device
    height, width = size
    probs = class_logits.float().softmax(dim=-1)
    scores, labels = probs.max(dim=-1)  # (B, Q): the first column on a tie, as torch (and Mask2Former) do
    keep = (labels != columns - 1) & (scores > config.object_mask_threshold)
    counts = keep.sum(dim=1)
    kept = int(counts.max()) if batch else 0
    ids = torch.zeros((batch, height, width), dtype=torch.long, device=device)
    if kept == 0:
        empty = torch.zeros((batch, 0), dtype=torch.long, device=device)
        return PanopticMaps(ids, empty, empty.clone(), torch.zeros((batch, 0), device=device))

    # The kept queries of every frame first, in query order (a stable sort of "not kept").
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :kept]  # (B, Qk)
    valid = torch.arange(kept, device=device)[None] < counts[:, None]  # (B, Qk)
    kept_labels, kept_scores = labels.gather(1, order), scores.gather(1, order)
    low = mask_logits.gather(1, order[:, :, None, None].expand(-1, -1, *mask_logits.shape[-2:]))
    masks = F.interpolate(low.float(), size=padded_size, mode="bilinear", align_corners=False)
    masks = masks[..., :height, :width].sigmoid()  # (B, Qk, H, W)

    weighted = kept_scores[:, :, None, None] * masks
    weighted = weighted.masked_fill(~valid[:, :, None, None], -1.0)  # padding slots never win
    winner = first_argmax(weighted, dim=1)  # (B, H, W)
    del weighted
    own = masks.gather(1, winner[:, None]).squeeze(1) >= 0.5  # the winner's own probability ≥ 0.5
    flat = winner.flatten(1)
    won = torch.zeros((batch, kept), dtype=torch.long, device=device).scatter_add_(1, flat, torch.ones_like(flat))
    won_confident = torch.zeros_like(won).scatter_add_(1, flat, own.flatten(1).long())
    confident = (masks >= 0.5).flatten(2).sum(dim=2)  # (B, Qk)
    del masks

    stats = [t.cpu().tolist() for t in (won, confident, won_confident, kept_labels, kept_scores, counts)]
    thing = is_thing.cpu().tolist()
    lut = torch.zeros((batch, kept), dtype=torch.long)
    rows: list[list[tuple[int, int, float]]] = []
    for b in range(batch):
        won_b, confident_b, final_b, labels_b, scores_b, count = (s[b] for s in stats)
        segments: list[tuple[int, int, float]] = []
        stuff_segment: dict[int, int] = {}
        for k in range(count):
            if won_b[k] == 0 or confident_b[k] == 0 or final_b[k] == 0:
                continue
            if won_b[k] / confident_b[k] < config.overlap_threshold:  # as Mask2Former: a ratio of the counts
                continue
            label = labels_b[k]
            if not thing[label]:
                if label in stuff_segment:
                    lut[b, k] = stuff_segment[label]
                    continue
                stuff_segment[label] = len(segments) + 1
            segments.append((len(segments) + 1, label, scores_b[k]))
            lut[b, k] = len(segments)
        rows.append(segments)
    lut = lut.to(device)
    ids = torch.where(own, lut.gather(1, flat).view(batch, height, width), ids)
    return PanopticMaps.from_rows(ids, rows)
