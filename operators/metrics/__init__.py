"""Metrics of video panoptic segmentation: VPQ / PQ (Kim et al. 2020) and STQ (Weber et al.
2021), computed from per-frame contingency tables and kept as mergeable sums."""
from operators.metrics.contingency import FrameTable, SegmentTable, decode_ids, frame_table
from operators.metrics.stq import StqStats, STQuality
from operators.metrics.totals import Totals
from operators.metrics.vpq import (DEFAULT_KS, ClassQuality, PqSums, VideoVpq, VpqResult, VpqStats, quality,
                                   window_counts, window_frames)

__all__ = ["FrameTable", "SegmentTable", "decode_ids", "frame_table", "StqStats", "STQuality", "DEFAULT_KS",
           "ClassQuality", "PqSums", "Totals", "VideoVpq", "VpqResult", "VpqStats", "quality", "window_counts",
           "window_frames"]
