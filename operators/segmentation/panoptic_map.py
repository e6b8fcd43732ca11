"""Finished panoptic maps: the form a model's own post-processing returns, and the last step
of every contract that is not Panoptic-DeepLab's.

A finished map is ``panoptic (B, H, W)`` integer ids (0 = VOID) plus, per image, segment rows
``(id, category_id, score)`` as a ``(B, N, 3)`` tensor whose padding rows have id 0 — what a
TorchScript wrapper around detectron2's ``panoptic_seg, segments_info`` returns once the list
of dicts is made a tensor. ``category_id`` is the model's class index (detectron2's contiguous
id): the i-th entry of the model's categories JSON, whose ``id`` the outputs carry.

:func:`maps_from_outputs` checks such outputs (ids of the map all listed, classes in range,
ids unique) and crops them to the frame; :func:`frame_segments` turns :class:`PanopticMaps`
into the host's :class:`~operators.segmentation.postprocess.FrameSegments` — areas and boxes
from the pixels, and SiamTrack's MaskPool embedding per segment when the model has an
embedding output — batched in torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from operators.errors import FormatMismatchError
from operators.formats.panoptic import SegmentInfo
from operators.segmentation.postprocess import FrameSegments

MAX_SEGMENT_ID = (1 << 24) - 1  # a COCO-panoptic PNG holds 24 bits per pixel


@dataclass
class PanopticMaps:
    """A batch of finished panoptic maps, on the host's device.

    ``ids (B, H, W) long`` (0 = VOID); ``segment_ids``, ``classes`` ``(B, N) long`` and
    ``scores (B, N) float32`` — row n of frame b describes id ``segment_ids[b, n]``; rows with
    id 0 are padding.
    """

    ids: torch.Tensor
    segment_ids: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor

    @classmethod
    def from_rows(cls, ids: torch.Tensor, rows: Sequence[Sequence[tuple[int, int, float]]]) -> "PanopticMaps":
        """From per-frame lists of ``(id, class, score)``, padded to the longest."""
        width = max((len(r) for r in rows), default=0)
        table = np.zeros((len(rows), width, 3), np.float64)
        for b, frame_rows in enumerate(rows):
            if frame_rows:
                table[b, :len(frame_rows)] = frame_rows
        table = torch.from_numpy(table).to(ids.device)
        return cls(ids, table[..., 0].long(), table[..., 1].long(), table[..., 2].float())

    def rows(self, b: int) -> list[tuple[int, int, float]]:
        """Frame ``b``'s rows without padding: ``(id, class, score)``."""
        ids, classes, scores = (t[b].cpu().tolist() for t in (self.segment_ids, self.classes, self.scores))
        return [(i, c, s) for i, c, s in zip(ids, classes, scores) if i != 0]


def check_stride(key: str, value: object, padded: tuple[int, int], where: str, batch: int | None = None) -> torch.Tensor:
    """``value`` must be a finite float ``(B, C, h, w)`` tensor at one integer stride of ``padded``."""
    if not isinstance(value, torch.Tensor) or value.dim() != 4 or (batch is not None and value.shape[0] != batch):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise FormatMismatchError(where, f"output {key!r} must be a (B, C, h, w) tensor, got {shape}")
    if not value.is_floating_point() or not torch.isfinite(value).all():
        raise FormatMismatchError(where, f"output {key!r} must be finite floating point")
    h, w = value.shape[-2:]
    height, width = padded
    if height % h or width % w or height // h != width // w:
        raise FormatMismatchError(where, f"output {key!r} of size {(h, w)} is not the padded input size "
                                         f"{(height, width)} divided by one integer stride")
    return value


def maps_from_outputs(outputs: dict[str, torch.Tensor], padded: tuple[int, int], size: tuple[int, int],
                      num_classes: int, where: str, frame_names: Sequence[str]) -> PanopticMaps:
    """Check a finished-map model's ``panoptic (B, H', W')`` and ``segments (B, N, 3)`` and crop
    the map to the frames' ``size``. ``(H', W')`` is the padded input's size or the frames'.

    Raises :class:`FormatMismatchError` naming ``where`` (and the frame, for a frame's fault).
    """
    panoptic, segments = outputs["panoptic"], outputs["segments"]
    batch = len(frame_names)
    if not isinstance(panoptic, torch.Tensor) or panoptic.dim() != 3 or panoptic.shape[0] != batch:
        shape = tuple(panoptic.shape) if isinstance(panoptic, torch.Tensor) else type(panoptic).__name__
        raise FormatMismatchError(where, f"output 'panoptic' must be a (B={batch}, H, W) tensor, got {shape}")
    if panoptic.is_floating_point() or panoptic.dtype == torch.bool or panoptic.is_complex():
        raise FormatMismatchError(where, f"output 'panoptic' must hold integer ids, got {panoptic.dtype}")
    if tuple(panoptic.shape[1:]) not in (tuple(padded), tuple(size)):
        raise FormatMismatchError(where, f"output 'panoptic' is {tuple(panoptic.shape[1:])}; expected the padded "
                                         f"input's {tuple(padded)} or the frames' {tuple(size)} (H, W)")
    if not isinstance(segments, torch.Tensor) or segments.dim() != 3 or segments.shape[0] != batch \
            or segments.shape[2] != 3:
        shape = tuple(segments.shape) if isinstance(segments, torch.Tensor) else type(segments).__name__
        raise FormatMismatchError(where, f"output 'segments' must be a (B={batch}, N, 3) tensor of rows "
                                         f"(id, category_id, score), got {shape}")
    table = segments.double()
    if not torch.isfinite(table).all():
        raise FormatMismatchError(where, "output 'segments' holds non-finite values")
    ids = panoptic[:, :size[0], :size[1]].long()
    segment_ids, classes = table[..., 0], table[..., 1]
    for b, name in enumerate(frame_names):
        row_ids, row_classes = segment_ids[b], classes[b]
        real = row_ids != 0
        problem = ""
        if (row_ids != row_ids.round()).any() or (row_classes[real] != row_classes[real].round()).any():
            problem = "segment ids and category ids must be whole numbers"
        elif (row_ids < 0).any() or (row_ids > MAX_SEGMENT_ID).any():
            problem = f"segment ids must be in 0..{MAX_SEGMENT_ID} (0: padding)"
        elif ((row_classes[real] < 0) | (row_classes[real] >= num_classes)).any():
            bad = sorted({int(c) for c in row_classes[real].tolist() if not 0 <= c < num_classes})
            problem = f"category ids {bad[:10]} are not class indices of the model's {num_classes} categories"
        elif row_ids[real].unique().numel() != int(real.sum()):
            problem = "a segment id is listed twice"
        else:
            listed = row_ids[real].long()
            present = ids[b].unique()
            unknown = present[(present != 0) & ~torch.isin(present, listed)]
            if unknown.numel():
                problem = f"ids {unknown[:10].tolist()} are in the panoptic map but not in the segment rows"
        if problem:
            raise FormatMismatchError(where, f"frame {name}: {problem}")
    return PanopticMaps(ids, segment_ids.long(), classes.long(), table[..., 2].float())


def frame_segments(maps: PanopticMaps, category_ids: Sequence[int], embedding: torch.Tensor | None = None,
                   padded: tuple[int, int] | None = None) -> list[FrameSegments]:
    """:class:`PanopticMaps` → one :class:`FrameSegments` per frame.

    ``category_ids[i]``: the category id of class index i. ``embedding (B, D, h, w)``: an
    embedding output at a stride of ``padded`` (upsampled bilinearly to it, cropped to the
    frame), mask-pooled per segment (SiamTrack's MaskPool: the L2-normalised mean); without
    it the embeddings have zero columns. Rows whose id has no pixel (padding, or cropped away
    with the padding of the input) are left out.
    """
    ids = maps.ids
    batch, height, width = ids.shape
    device = ids.device
    rows = maps.segment_ids.shape[1]
    # slot of a pixel: the row of its id; VOID (and padding rows' id 0) → slot `rows`
    real = maps.segment_ids != 0
    keys = torch.where(real, maps.segment_ids, torch.full_like(maps.segment_ids, -1))
    sorted_keys, order = keys.sort(dim=1)
    flat = ids.flatten(1)
    if rows:
        position = torch.searchsorted(sorted_keys.contiguous(), flat.contiguous()).clamp_max(rows - 1)
        found = sorted_keys.gather(1, position) == flat
        slot = torch.where(found & (flat != 0), order.gather(1, position), torch.full_like(flat, rows))
    else:
        slot = torch.full_like(flat, rows)
    area = torch.zeros((batch, rows + 1), dtype=torch.long, device=device).scatter_add_(1, slot, torch.ones_like(slot))
    xs = torch.arange(width, device=device).repeat(height).expand(batch, -1)
    ys = torch.arange(height, device=device).repeat_interleave(width).expand(batch, -1)
    big = height * width
    x0 = torch.full_like(area, big).scatter_reduce(1, slot, xs, "amin")
    y0 = torch.full_like(area, big).scatter_reduce(1, slot, ys, "amin")
    x1 = torch.full_like(area, -1).scatter_reduce(1, slot, xs, "amax")
    y1 = torch.full_like(area, -1).scatter_reduce(1, slot, ys, "amax")
    if embedding is not None:
        full = F.interpolate(embedding.float(), size=padded, mode="bilinear", align_corners=False)
        full = full[..., :height, :width]
        dim = full.shape[1]
        per_pixel = full.permute(0, 2, 3, 1).reshape(batch, height * width, dim)
        pooled = torch.zeros((batch, rows + 1, dim), device=device).scatter_add_(
            1, slot.unsqueeze(-1).expand(-1, -1, dim), per_pixel)
        pooled = F.normalize(pooled, dim=-1).cpu().numpy()
    else:
        pooled = np.zeros((batch, rows + 1, 0), np.float32)
    stats = [t.cpu().numpy() for t in (area, x0, y0, x1, y1, maps.segment_ids, maps.classes, maps.scores)]
    ids_np = ids.to(torch.int32).cpu().numpy()
    out = []
    for b in range(batch):
        a, bx0, by0, bx1, by1, seg_ids, classes, scores = (s[b] for s in stats)
        segments, vectors = [], []
        for n in range(rows):
            if seg_ids[n] == 0 or a[n] == 0:
                continue
            segments.append(SegmentInfo(int(seg_ids[n]), int(category_ids[int(classes[n])]), int(a[n]),
                                        (int(bx0[n]), int(by0[n]), int(bx1[n] - bx0[n] + 1), int(by1[n] - by0[n] + 1)),
                                        0, float(scores[n])))
            vectors.append(pooled[b, n])
        embeddings = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, pooled.shape[2]), np.float32)
        out.append(FrameSegments(ids_np[b], segments, embeddings))
    return out
