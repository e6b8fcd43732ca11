"""The one frame loop of a whole video: frame → flow → tracker, in frame order, no Ray.

``tubeflow track`` (per-frame predictions from files), the sequential baseline of the label
pipeline (:mod:`pipelines.sequential`), the association experiments
(:mod:`operators.training.evaluation`) and the tracker's quality tests all run a video through
this loop; the label pipeline runs the same operators in chunks on Ray
(:class:`~operators.association.VideoOperator`), and its tests hold it equal to this loop.

Where the frames come from, and what is done with each tracked frame, stays with the caller:
``frames`` is any iterable of :class:`~operators.association.TrackerFrame` (a generator that
decodes and segments, reads PNGs, or replays a synthetic video), and the loop yields each
frame with its tracked :class:`~operators.formats.panoptic.PanopticFrame`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Iterator

import numpy as np

from operators.association.track import TrackerFrame
from operators.association.tracker import VideoTracker
from operators.errors import TubeflowError
from operators.formats.panoptic import PanopticFrame

FlowEstimator = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``estimate(current_rgb, previous_rgb) → (H, W, 2) float32`` flow current → previous
(:func:`operators.flow.make_flow` builds one)."""


def track_frames(tracker: VideoTracker, frames: Iterable[TrackerFrame], estimate_flow: FlowEstimator | None = None,
                 *, seconds: dict[str, float] | None = None, clock: Callable[[], float] = time.process_time,
                 on_error: Callable[[TrackerFrame, TubeflowError], None] | None = None
                 ) -> Iterator[tuple[TrackerFrame, PanopticFrame]]:
    """Track ``frames`` (one video, in frame order); yields ``(frame, tracked)`` per frame.

    * ``estimate_flow``: the flow of each frame to the previous one that was tracked (none for
      the first, or where the two differ in size); None: each frame's own ``flow`` is used as
      given (precomputed, or the synthetic generator's).
    * ``seconds``: CPU seconds of the flow and of the tracker are added to its ``"flow"`` and
      ``"associate"`` entries (``clock``: CPU time, as the pipeline's stages measure it).
    * ``on_error``: a frame whose flow or tracking raises a :class:`TubeflowError` (a size or
      category the tracker refuses) is handed to it and left out: the next frame is tracked as
      if it had not come. None: the error propagates.
    """
    previous: np.ndarray | None = None
    for frame in frames:
        start = clock()
        try:
            if estimate_flow is not None:
                usable = previous is not None and frame.rgb is not None and previous.shape == frame.rgb.shape
                frame = dataclasses.replace(frame, flow=estimate_flow(frame.rgb, previous) if usable else None)
            flowed = clock()
            tracked = tracker.update(frame)
        except TubeflowError as exc:
            if on_error is None:
                raise
            on_error(frame, exc)
            continue
        if seconds is not None:
            done = clock()
            seconds["flow"] = seconds.get("flow", 0.0) + flowed - start
            seconds["associate"] = seconds.get("associate", 0.0) + done - flowed
        previous = frame.rgb
        yield frame, tracked
