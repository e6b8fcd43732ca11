"""Dataset totals of both metrics: the sums a reduce passes on, whatever ran the videos
(Ray tasks, a process pool, this process)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from operators.metrics.stq import StqStats
from operators.metrics.video import VideoEvaluation
from operators.metrics.vpq import VpqStats


@dataclass
class Totals:
    """Dataset sums: VPQ rows summed over videos, STQ per-sequence rows summed to one
    (None when no video was evaluated)."""

    vpq: VpqStats
    stq: StqStats | None

    @classmethod
    def of(cls, videos: Sequence[VideoEvaluation]) -> "Totals":
        """The totals of the videos that were evaluated (those with an error are left out)."""
        return cls.merge([cls(v.vpq, v.stq) for v in videos if not v.error])

    @classmethod
    def merge(cls, parts: Sequence["Totals"]) -> "Totals":
        stq = [p.stq for p in parts if p.stq is not None]
        return cls(VpqStats.merge([p.vpq for p in parts], keep_videos=False),
                   StqStats.merge(stq, keep_videos=False) if stq else None)
