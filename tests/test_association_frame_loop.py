"""The one frame loop (operators/association/frame_loop.py): frame → flow → tracker, as `tubeflow
track`, the sequential baseline, the association experiments and the quality tests run it."""
import dataclasses

import numpy as np
import pytest

from association_scenes import CAR, PERSON, Box, scrambled_video
from operators.association import TrackerConfig, TrackerFrame, VideoTracker
from operators.association.frame_loop import track_frames
from operators.errors import InputError

BOXES = [Box(14001, CAR, 5, 30, 14, 10, 3, 0, (200, 30, 30)), Box(12001, PERSON, 40, 20, 6, 14, 0, 1, (30, 200, 30))]


class RecordingFlow:
    """A flow estimator that returns the scene's true flow and records which frames it was given."""

    def __init__(self, video):
        self.true = {id(f.rgb): f.flow for f, _, _ in video}
        self.pairs = []

    def __call__(self, current, previous):
        self.pairs.append((id(current), id(previous)))
        return self.true[id(current)]


def test_the_loop_equals_the_tracker_fed_by_hand():
    video = scrambled_video(BOXES, 8)
    by_hand = VideoTracker("v", TrackerConfig())
    expected = [by_hand.update(f) for f, _, _ in video]
    estimate = RecordingFlow(video)
    frames = [dataclasses.replace(f, flow=None) for f, _, _ in video]  # the loop computes the flow
    got = list(track_frames(VideoTracker("v", TrackerConfig()), frames, estimate))
    assert [f.frame_index for f, _ in got] == list(range(8))
    for (frame, tracked), reference in zip(got, expected):
        np.testing.assert_array_equal(tracked.ids, reference.ids)
    assert estimate.pairs == [(id(video[t][0].rgb), id(video[t - 1][0].rgb)) for t in range(1, 8)]
    assert got[0][0].flow is None and got[3][0].flow is video[3][0].flow
    # without an estimator each frame's own flow is used as given
    given = list(track_frames(VideoTracker("v", TrackerConfig()), [f for f, _, _ in video]))
    assert all(np.array_equal(a.ids, b.ids) for (_, a), b in zip(given, expected))


def test_a_refused_frame_is_left_out_and_the_next_flow_is_to_the_last_tracked_frame():
    video = scrambled_video(BOXES, 6)
    estimate, refused = RecordingFlow(video), []
    frames = [f for f, _, _ in video]
    frames[3] = dataclasses.replace(frames[3], panoptic=dataclasses.replace(frames[3].panoptic,
                                                                            ids=frames[3].panoptic.ids[:10]))
    estimate.true[id(frames[3].rgb)] = None
    out = list(track_frames(VideoTracker("v", TrackerConfig()), frames, estimate,
                            on_error=lambda frame, exc: refused.append((frame.frame_index, str(exc)))))
    assert [f.frame_index for f, _ in out] == [0, 1, 2, 4, 5]
    assert [i for i, _ in refused] == [3] and "frame 3" in refused[0][1]
    assert (id(frames[4].rgb), id(frames[2].rgb)) in estimate.pairs  # frame 4 flows to frame 2, not the refused 3
    with pytest.raises(InputError):
        list(track_frames(VideoTracker("v", TrackerConfig()), frames, estimate))


def test_frames_of_another_size_get_no_flow_and_the_seconds_are_counted():
    video = scrambled_video(BOXES, 3)
    small = scrambled_video(BOXES, 1, height=32, width=48)[0][0]
    frames = [video[0][0], video[1][0], dataclasses.replace(small, frame_index=2)]
    calls, seconds, refused = [], {"flow": 0.0, "associate": 0.0}, []
    ticks = iter(range(100))
    out = list(track_frames(VideoTracker("v", TrackerConfig()), frames,
                            lambda current, previous: calls.append(current.shape) or np.zeros((*current.shape[:2], 2),
                                                                                               np.float32),
                            seconds=seconds, clock=lambda: float(next(ticks)),
                            on_error=lambda frame, exc: refused.append(frame)))
    assert calls == [(64, 96, 3)]  # the 32×48 frame gets no flow to a 64×96 one (the tracker then refuses it)
    assert [f.frame_index for f, _ in out] == [0, 1] and refused[0].flow is None
    assert seconds == {"flow": 2.0, "associate": 2.0}  # one tick each per tracked frame
    assert isinstance(out[0][0], TrackerFrame)
