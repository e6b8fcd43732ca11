"""The labelling operators in a plain loop, one video after the other, no Ray.

This is the reference the pipeline must agree with (same segments, same track ids: chunking
and scheduling must not change the result) and the baseline its speed is measured against
(tests/benchmarks/bench_label.py). It runs the same operators in the same order: decode,
segment, flow (current → previous), associate, and — with ``segments_out`` — the sink's
segments table (one Parquet file per video), so that a speed comparison does the same work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from operators.association import TrackerConfig, TrackerFrame
from operators.association.methods import make_tracker
from operators.association.frame_loop import track_frames
from operators.flow import make_flow
from operators.formats import segments_table
from operators.formats.panoptic import PanopticFrame
from operators.video import open_video
from pipelines.label.stages import TIMED, operator_clock


@dataclass
class SequentialResult:
    """Tracked frames per video and the CPU seconds spent in each operator."""

    frames: dict[str, list[PanopticFrame]] = field(default_factory=dict)
    stage_cpu_seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in TIMED})

    @property
    def frame_count(self) -> int:
        return sum(len(v) for v in self.frames.values())


def label_sequentially(videos: list[tuple[str, str]], host, flow: str = "dis", flow_options: dict | None = None,
                       tracker: TrackerConfig | None = None,
                       image_id: Callable[[str, int], str] = lambda v, i: f"{v}_{i:06d}",
                       keep_frames: bool = True, segments_out: str | None = None) -> SequentialResult:
    """Label ``videos`` [(video_id, uri)] with ``host`` (a SegmentationHost) frame by frame through
    the one frame loop (:func:`operators.association.frame_loop.track_frames`); ``segments_out``:
    also write the tracked frames as a segments table there."""
    estimate = make_flow(flow, **(flow_options or {"preset": "medium"}))
    result = SequentialResult()
    seconds = result.stage_cpu_seconds
    clock = operator_clock  # CPU time, as the pipeline's stages measure it
    for video_id, uri in videos:
        tracked, rows, count = [], [], 0
        with open_video(uri) as source:
            frames = _segmented_frames(video_id, source.iter_frames(), host, image_id, seconds)
            for frame, out in track_frames(make_tracker(video_id, tracker or TrackerConfig()), frames, estimate,
                                           seconds=seconds, clock=clock):
                if segments_out is not None:
                    t = clock()
                    rows.append(segments_table.frame_to_batch(out, video_id, frame.frame_index, frame.image_id,
                                                              host.categories))
                    seconds["sink"] += clock() - t
                if keep_frames:
                    tracked.append(out)
                count += 1
        nonempty = [r for r in rows if r.num_rows]
        if nonempty:
            t = clock()
            segments_table.write_segments_table(segments_out, nonempty)
            seconds["sink"] += clock() - t
        result.frames[video_id] = tracked if keep_frames else [None] * count
    return result


def _segmented_frames(video_id: str, decoded: Iterator[np.ndarray], host, image_id: Callable[[str, int], str],
                      seconds: dict[str, float]) -> Iterator[TrackerFrame]:
    """The video's frames decoded and segmented one at a time, as the tracker takes them (its flow
    comes in the loop); the CPU seconds of each go to ``seconds``."""
    clock, index = operator_clock, 0
    while True:
        t = clock()
        rgb = next(decoded, None)
        seconds["decode"] += clock() - t
        if rgb is None:
            return
        t = clock()
        segments = host.segment([rgb], [image_id(video_id, index)])[0]
        embeddings = {s.id: v for s, v in zip(segments.segments, segments.embeddings)} \
            if segments.embeddings.ndim == 2 and segments.embeddings.shape[1] else None
        seconds["segment"] += clock() - t
        yield TrackerFrame(index, segments.to_panoptic_frame(), rgb, None, embeddings, image_id(video_id, index))
        index += 1
