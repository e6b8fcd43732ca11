"""Online association: per-frame panoptic segments → identities that hold through a video.

Public API::

    from operators.association import TrackerConfig, TrackerFrame
    from operators.association.methods import make_tracker
    tracker = make_tracker("0000", TrackerConfig())   # the default: the composite tracker (assisted.py)
    tracked = tracker.update(TrackerFrame(frame_index, panoptic, rgb, flow))   # PanopticFrame
    hybrid = make_tracker("0000", TrackerConfig(method="hybrid"))   # = VideoTracker: no network

    from operators.association import TrackChunk, VideoOperator
    op = VideoOperator("0000")                  # chunks in any order, frames out in order (default tracker)
    outputs = op.push(start, stop, TrackChunk("0000", start, stop, frames))
    blob = op.checkpoint(); op = VideoOperator.restore(blob)
    tracker = make_tracker("0000", TrackerConfig(method="learned"))   # the learned tracker

No Ray in here: the actor wrapper is :mod:`pipelines.label.association_actor`.
"""
from operators.association.config import TrackerConfig
from operators.association.track import Track, TrackerFrame, TrackState
from operators.association import motion
from operators.association.tracker import VideoTracker
from operators.association.video_operator import TrackChunk, TrackedFrame, VideoOperator

__all__ = ["TrackerConfig", "motion", "Track", "TrackerFrame", "TrackState", "VideoTracker", "TrackChunk", "TrackedFrame",
           "VideoOperator"]
