"""Per-frame predictions made elsewhere, served as a segmenter: COCO-panoptic predictions in
the Cityscapes-VPS submission layout (``pred.json`` + ``pan_pred/``), looked up by image id.

It has the segmentation host's interface (``segment``, ``model_uri``, ``model_sha256``) so
the pipelines treat both alike, and no network: its ``embeddings`` have zero columns.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from operators.errors import InputError
from operators.formats.categories import CITYSCAPES_CATEGORIES
from operators.formats.panoptic import SegmentInfo
from operators.formats.vps_layout import VpsImage, read_predictions
from operators.segmentation.postprocess import FrameSegments


class PrecomputedSegmenter:
    """``PrecomputedSegmenter(predictions_dir).segment(frames, image_ids)`` → one
    :class:`FrameSegments` per frame, read from the submission layout by image id."""

    def __init__(self, model_uri: str, num_classes: int | None = None):
        self.model_uri = model_uri
        self.model_sha256 = f"precomputed:{model_uri}"
        self.num_classes = num_classes or len(CITYSCAPES_CATEGORIES)
        self.categories = CITYSCAPES_CATEGORIES  # the classes of the submission layout
        self._predictions = read_predictions(model_uri)

    def segment(self, frames: list[np.ndarray], image_ids: Sequence[object] | None = None) -> list[FrameSegments]:
        if image_ids is None:
            raise InputError(self.model_uri, "precomputed predictions need the image ids of the frames")
        return [self._read(frame, image_id) for frame, image_id in zip(frames, image_ids)]

    def _read(self, frame: np.ndarray, image_id: object) -> FrameSegments:
        image = VpsImage(image_id, "", frame.shape[1], frame.shape[0], "", 0)
        predicted = self._predictions.read_frame(image, range(self.num_classes))
        segments = [SegmentInfo(s.id, s.category_id, s.area, s.bbox, s.iscrowd, 1.0 if s.score is None else s.score)
                    for s in predicted.segments]
        return FrameSegments(predicted.ids.astype(np.int32), segments, np.zeros((len(segments), 0), np.float32))
