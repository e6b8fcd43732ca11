"""VideoOperator: chunks in any order, frames out in order, bounded buffer, checkpoints."""
import dataclasses

import numpy as np
import pytest

from association_scenes import CAR, PERSON, Box, scrambled_video
from operators.association import TrackChunk, TrackerConfig, VideoOperator, VideoTracker
from operators.errors import InputError


def video_frames(n=12, seed=3):
    boxes = [Box(14001, CAR, 5, 30, 14, 10, 3, 0, (200, 30, 30)),
             Box(14002, CAR, 75, 36, 14, 10, -3, 0, (200, 30, 30), hidden=frozenset({5, 6})),
             Box(12001, PERSON, 40, 20, 6, 14, 0, 1, (30, 200, 30))]
    return [f for f, _, _ in scrambled_video(boxes, n, seed=seed)]


def chunks_of(frames, size, video_id="v"):
    return [TrackChunk(video_id, a, min(a + size, len(frames)), frames[a:a + size]) for a in range(0, len(frames), size)]


def assert_same(outputs, reference):
    assert [o.frame_index for o in outputs] == list(range(len(reference)))
    for got, want in zip(outputs, reference):
        assert got.error is None
        np.testing.assert_array_equal(got.panoptic.ids, want.ids)
        assert got.panoptic.segments == want.segments


def test_out_of_order_chunks_give_the_in_order_result():
    frames = video_frames()
    tracker = VideoTracker("v")
    reference = [tracker.update(f) for f in frames]
    op = VideoOperator("v", max_buffered_chunks=3)
    chunks = chunks_of(frames, 3)            # starts 0, 3, 6, 9
    outputs = []
    for chunk in [chunks[3], chunks[1], chunks[2]]:
        assert op.push(chunk.start, chunk.stop, chunk) == []
    assert op.held_starts == [3, 6, 9]
    outputs += op.push(chunks[0].start, chunks[0].stop, chunks[0])
    assert op.held_starts == [] and op.next_start == 12
    assert_same(outputs, reference)


def test_too_many_early_chunks_is_a_clear_error():
    chunks = chunks_of(video_frames(), 3, "cam2")
    op = VideoOperator("cam2", max_buffered_chunks=1)
    op.push(chunks[1].start, chunks[1].stop, chunks[1])
    with pytest.raises(InputError, match=r"video cam2 frames 6\.\.8: 1 early chunks are already held waiting for frame 0"):
        op.push(chunks[2].start, chunks[2].stop, chunks[2])
    op2 = VideoOperator("cam2")
    op2.push(3, 6, chunks[1])
    with pytest.raises(InputError, match="arrived twice"):
        op2.push(3, 6, chunks[1])
    op2.push(0, 3, chunks[0])
    with pytest.raises(InputError, match="already tracked"):
        op2.push(0, 3, chunks[0])


def test_a_bad_frame_inside_a_chunk_is_reported_and_the_video_goes_on():
    frames = video_frames()
    tracker = VideoTracker("v")
    reference = [tracker.update(f) for f in frames]
    bad = dataclasses.replace(frames[4], flow=np.zeros((3, 3, 2), np.float32))
    chunk = TrackChunk("v", 3, 6, [frames[3], bad, frames[4], frames[5]])
    op = VideoOperator("v")
    out = op.push(0, 3, TrackChunk("v", 0, 3, frames[:3])) + op.push(3, 6, chunk)
    errors = [o for o in out if o.error]
    assert len(errors) == 1 and "video v frame 4" in errors[0].error and "flow" in errors[0].error
    assert_same([o for o in out if not o.error], reference[:6])


def test_checkpoint_restore_resumes_identically():
    frames = video_frames(15)
    chunks = chunks_of(frames, 5)
    cfg = TrackerConfig(max_lost_frames=5, assignment="mutual")
    whole = VideoOperator("v", cfg)
    reference = [o.panoptic for c in chunks for o in whole.push(c.start, c.stop, c)]

    op = VideoOperator("v", cfg)
    outputs = op.push(0, 5, chunks[0])
    blob = op.checkpoint()
    assert isinstance(blob, bytes)
    del op                                   # the actor is lost
    resumed = VideoOperator.restore(blob)
    assert resumed.next_start == 5 and resumed.tracker.config == cfg
    for c in (chunks[2], chunks[1]):
        outputs += resumed.push(c.start, c.stop, c)
    assert_same(outputs, reference)


def test_restore_rejects_garbage():
    with pytest.raises(InputError, match="association checkpoint"):
        VideoOperator.restore(b"not a checkpoint")


def test_chunk_of_another_video_is_rejected():
    frames = video_frames(3)
    op = VideoOperator("a")
    with pytest.raises(InputError, match="chunk holds video b"):
        op.push(0, 3, TrackChunk("b", 0, 3, frames))
