"""Small models of the three output contracts for tests, exported as a user would (TorchScript),
a slow, obviously-correct per-pixel reference of Mask2Former's panoptic inference, and
Mask2Former's own code for it, ported line by line.

The reference shares no code with :mod:`operators.segmentation.mask_classification`: the input
is padded with numpy, the bilinear upsampling is PyTorch's ``align_corners=False`` formula
written out per pixel, and every decision is a Python loop over pixels and queries, in the
order Mask2Former's ``panoptic_inference`` takes them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TinyMaskFormer(nn.Module):
    """A mask-classification model in miniature: stride-4 features, Q learned queries, class
    logits over ``classes`` + "no object", sharp mask logits (positive where a query is nearly
    the pixel's best match, widened by a random spread per query so that some are confident
    beyond the pixels they win: the overlap rule's case), rounded to whole numbers so that
    probabilities tie exactly (sigmoid(0) = 0.5 at the 0.5 boundary). Queries 1 and 3 copy
    queries 0 and 2 (every pixel a tie between them); query 5 is query 4 nudged, so that it
    tends to the same class (stuff of one class merging, or two instances of a thing)."""

    def __init__(self, queries: int = 14, classes: int = 19, dim: int = 6, seed: int = 0, names: str = "detr",
                 embedding_dim: int = 0, margin: float = 0.5):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        with torch.no_grad():
            self.stem.weight.copy_(torch.randn(self.stem.weight.shape, generator=generator))
            self.stem.bias.copy_(torch.randn(dim, generator=generator) * 0.5)
        q = torch.randn(queries, dim, generator=generator) * 1.5
        q[1], q[3], q[5] = q[0], q[2], q[4] + 0.05 * torch.randn(dim, generator=generator)
        self.queries = nn.Parameter(q)
        self.classifier = nn.Parameter(torch.randn(dim, classes + 1, generator=generator) * 4.0)
        self.names = names
        self.margin = margin
        # some queries confident beyond the pixels they win: the overlap rule's cases
        spread = torch.rand(1, queries, 1, 1, generator=generator) * 1.5
        spread[0, 1], spread[0, 3] = spread[0, 0], spread[0, 2]
        self.register_buffer("spread", spread)
        self.embedding = nn.Conv2d(dim, embedding_dim, 1) if embedding_dim else None

    def forward(self, images: torch.Tensor):
        features = torch.tanh(self.stem(images - 0.5))  # (B, D, h, w)
        queries = self.queries[None] + features.mean(dim=(2, 3))[:, None] * 0.5  # (B, Q, D)
        logits = queries @ self.classifier
        affinity = torch.einsum("bqd,bdhw->bqhw", queries, features)
        # sharp, mostly disjoint masks as trained models make them: positive where a query is
        # (nearly) the best match of the pixel
        masks = torch.round((affinity - affinity.amax(dim=1, keepdim=True) + self.margin + self.spread) * 4.0)
        if self.names == "hf":
            return {"class_queries_logits": logits, "masks_queries_logits": masks}
        if self.names == "tuple":
            return logits, masks
        if self.names == "hf-tuple":  # transformers traced with torchscript=True: hidden states follow
            return logits, masks, features, (features, features)
        out = {"pred_logits": logits, "pred_masks": masks}
        if self.embedding is not None:
            out["embedding"] = self.embedding(features)
        return out


class ReplayPanopticMap(nn.Module):
    """A finished-map model that returns given maps and segment rows, whatever its input."""

    def __init__(self, panoptic: torch.Tensor, segments: torch.Tensor):
        super().__init__()
        self.register_buffer("panoptic", panoptic)
        self.register_buffer("segments", segments)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        assert images.shape[0] == self.panoptic.shape[0], "replays one batch of the stored size"
        return {"panoptic": self.panoptic, "segments": self.segments}


def export(model: nn.Module, path, example: torch.Tensor | None = None) -> str:
    """Save ``model`` as TorchScript (traced on ``example``, else scripted)."""
    model.eval()
    module = torch.jit.trace(model, example, strict=False) if example is not None else torch.jit.script(model)
    torch.jit.save(module, str(path))
    return str(path)


def padded_input(frames: np.ndarray, multiple: int = 32) -> torch.Tensor:
    """The default input spec, written independently: RGB / 255, edges replicated bottom/right."""
    _, height, width, _ = frames.shape
    ph, pw = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    padded = np.pad(frames.astype(np.float32) / np.float32(255.0),
                    ((0, 0), (0, ph - height), (0, pw - width), (0, 0)), mode="edge")
    return torch.from_numpy(np.ascontiguousarray(padded.transpose(0, 3, 1, 2)))


@dataclass
class ReferenceFrame:
    ids: np.ndarray  # (H, W) int
    rows: list[tuple[int, int, float]]  # (id, class, score) in the order made
    events: dict = field(default_factory=dict)  # what the frame exercised: ties, merges, drops


def _bilinear(low: np.ndarray, out_h: int, out_w: int, y: int, x: int) -> float:
    """PyTorch's bilinear ``align_corners=False`` value of output pixel (y, x)."""
    in_h, in_w = low.shape

    def source(dst: int, in_size: int, out_size: int) -> tuple[int, int, float]:
        s = (dst + 0.5) * (in_size / out_size) - 0.5
        s = max(s, 0.0)
        i0 = min(int(math.floor(s)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        return i0, i1, s - i0

    y0, y1, ly = source(y, in_h, out_h)
    x0, x1, lx = source(x, in_w, out_w)
    return ((1 - ly) * ((1 - lx) * low[y0, x0] + lx * low[y0, x1])
            + ly * ((1 - lx) * low[y1, x0] + lx * low[y1, x1]))


def reference_panoptic(class_logits: np.ndarray, mask_logits: np.ndarray, padded: tuple[int, int],
                       size: tuple[int, int], is_thing: list[bool], object_mask_threshold: float = 0.8,
                       overlap_threshold: float = 0.8) -> ReferenceFrame:
    """Mask2Former's panoptic inference for ONE frame, pixel by pixel.

    ``class_logits (Q, K+1)``, ``mask_logits (Q, h, w)`` as numpy arrays."""
    queries, columns = class_logits.shape
    kept = []  # (query, class, score)
    for q in range(queries):
        row = class_logits[q].astype(np.float64)
        e = np.exp(row - row.max())
        p = e / e.sum()
        label = int(np.argmax(p))  # numpy: the first maximum
        score = float(p[label])
        if label != columns - 1 and score > object_mask_threshold:
            kept.append((q, label, score))
    height, width = size
    events = {"kept": len(kept), "tie_pixels": 0, "merged": 0, "dropped_overlap": 0, "boundary_pixels": 0}
    ids = np.zeros((height, width), np.int64)
    if not kept:
        return ReferenceFrame(ids, [], events)
    prob = np.zeros((len(kept), height, width))
    for k, (q, _, _) in enumerate(kept):
        for y in range(height):
            for x in range(width):
                v = _bilinear(mask_logits[q].astype(np.float64), padded[0], padded[1], y, x)
                prob[k, y, x] = 1.0 / (1.0 + math.exp(-v))
    winner = np.zeros((height, width), np.int64)
    for y in range(height):
        for x in range(width):
            best, best_value, ties = 0, -1.0, 0
            for k, (_, _, score) in enumerate(kept):
                value = score * prob[k, y, x]
                if value > best_value:
                    best, best_value, ties = k, value, 0
                elif value == best_value:
                    ties += 1
            winner[y, x] = best
            events["tie_pixels"] += ties > 0
    events["boundary_pixels"] = int((prob == 0.5).sum())  # mask logit 0: counted as ≥ 0.5
    rows, stuff = [], {}
    for k, (_, label, score) in enumerate(kept):
        won = int((winner == k).sum())
        confident = int((prob[k] >= 0.5).sum())
        mine = (winner == k) & (prob[k] >= 0.5)
        if won == 0 or confident == 0 or not mine.any():
            continue
        if won / confident < overlap_threshold:
            events["dropped_overlap"] += 1
            continue
        if not is_thing[label]:
            if label in stuff:
                ids[mine] = stuff[label]
                events["merged"] += 1
                continue
            stuff[label] = len(rows) + 1
        rows.append((len(rows) + 1, label, score))
        ids[mine] = len(rows)
    return ReferenceFrame(ids, rows, events)


def mask2former_panoptic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, is_thing: list[bool],
                                   object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8):
    """Mask2Former's own ``panoptic_inference`` (facebookresearch/Mask2Former,
    ``mask_former_model.py``), ported line by line for one image: ``mask_cls (Q, K+1)``,
    ``mask_pred (Q, H, W)`` mask logits already upsampled and cropped to the frame →
    (panoptic (H, W) int32, [(id, class)])."""
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    mask_pred = mask_pred.sigmoid()
    keep = labels.ne(mask_cls.shape[-1] - 1) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
    cur_prob_masks = cur_scores.view(-1, 1, 1) * cur_masks
    h, w = cur_masks.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=cur_masks.device)
    segments_info = []
    current_segment_id = 0
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info
    cur_mask_ids = cur_prob_masks.argmax(0)
    stuff_memory_list = {}
    for k in range(cur_classes.shape[0]):
        pred_class = cur_classes[k].item()
        isthing = is_thing[pred_class]
        mask_area = (cur_mask_ids == k).sum().item()
        original_area = (cur_masks[k] >= 0.5).sum().item()
        mask = (cur_mask_ids == k) & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and mask.sum().item() > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not isthing:
                if int(pred_class) in stuff_memory_list:
                    panoptic_seg[mask] = stuff_memory_list[int(pred_class)]
                    continue
                stuff_memory_list[int(pred_class)] = current_segment_id + 1
            current_segment_id += 1
            panoptic_seg[mask] = current_segment_id
            segments_info.append((current_segment_id, int(pred_class)))
    return panoptic_seg, segments_info


