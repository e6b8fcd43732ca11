"""The tracker a :class:`~operators.association.config.TrackerConfig` names (``method``), built
new or from a checkpoint: the hybrid :class:`~operators.association.tracker.VideoTracker`,
:class:`~operators.association.learned.LearnedTracker`, or the hybrid's stages with the network's
help (:mod:`operators.association.assisted`)."""
from __future__ import annotations

import json

import numpy as np

from operators.association.assisted import AssistedTracker, CompositeTracker
from operators.association.config import TrackerConfig
from operators.association.learned import LearnedTracker
from operators.association.tracker import VideoTracker


def make_tracker(video_id: str, config: TrackerConfig | None = None) -> VideoTracker:
    """The tracker ``config.method`` names: the hybrid :class:`VideoTracker`, :class:`LearnedTracker`,
    :class:`AssistedTracker` or :class:`CompositeTracker`."""
    config = config or TrackerConfig()
    return _TRACKERS.get(config.method, VideoTracker)(video_id, config)


def tracker_from_state(meta: dict, arrays: dict[str, np.ndarray]) -> VideoTracker:
    """The tracker of a checkpoint (:meth:`VideoTracker.state` / :meth:`LearnedTracker.state`): the
    class its config's method names. A checkpoint written before trackers had a method (no
    ``"method"`` in its config) was written by the hybrid, not by today's default."""
    method = json.loads(meta["config"]).get("method", VideoTracker.METHOD)
    return _TRACKERS.get(method, VideoTracker).from_state(meta, arrays)


_TRACKERS = {cls.METHOD: cls for cls in (LearnedTracker, AssistedTracker, CompositeTracker)}
