"""The Ray wrapper: routing by video id, chunk references in any order, resume from checkpoints."""
import numpy as np

from association_scenes import CAR, PERSON, Box, scrambled_video
from operators.association import TrackChunk, VideoTracker
from pipelines.association_actor import AssociationPool, actor_index


def frames_of(seed):
    boxes = [Box(14001, CAR, 5, 30, 14, 10, 3, 0, (200, 30, 30)), Box(12001, PERSON, 40, 20, 6, 14, 0, 1, (30, 200, 30))]
    return [f for f, _, _ in scrambled_video(boxes, 9, seed=seed)]


def test_actor_index_is_stable_and_in_range():
    assert actor_index("0000", 4) == actor_index("0000", 4)
    assert {actor_index(f"{i:04d}", 3) for i in range(50)} == {0, 1, 2}
    assert actor_index("abc", 1) == 0


def test_pool_tracks_videos_from_out_of_order_chunk_refs(ray_local, tmp_path):
    ray = ray_local
    videos = {"0000": frames_of(0), "0001": frames_of(1)}
    pool = AssociationPool(2, checkpoint_dir=str(tmp_path / "ckpt"))
    pending = []
    for start in (6, 3, 0):                       # last chunk first
        for vid, frames in videos.items():
            ref = ray.put(TrackChunk(vid, start, start + 3, frames[start:start + 3]))
            pending.append(pool.submit(vid, start, start + 3, ref))
    results = [f for batch in ray.get(pending) for f in batch]
    for vid, frames in videos.items():
        tracker = VideoTracker(vid)
        reference = [tracker.update(f) for f in frames]
        got = [r for r in results if r.video_id == vid]
        assert [r.frame_index for r in got] == list(range(9))
        for r, want in zip(got, reference):
            np.testing.assert_array_equal(r.panoptic.ids, want.ids)
    assert (tmp_path / "ckpt" / "0000.association.npz").exists()


def test_a_restarted_pool_resumes_from_checkpoints(ray_local, tmp_path):
    ray = ray_local
    frames = frames_of(2)
    ckpt = str(tmp_path / "ckpt")
    tracker = VideoTracker("0002")
    reference = [tracker.update(f) for f in frames]
    first = AssociationPool(1, checkpoint_dir=ckpt)
    ray.get(first.submit("0002", 0, 3, ray.put(TrackChunk("0002", 0, 3, frames[:3]))))
    for actor in first.actors:
        ray.kill(actor)                            # the actor is lost after its first chunk
    second = AssociationPool(1, checkpoint_dir=ckpt)
    resent = ray.get(second.submit("0002", 0, 3, ray.put(TrackChunk("0002", 0, 3, frames[:3]))))
    assert resent == []                            # already consumed before the checkpoint
    rest = ray.get(second.submit("0002", 3, 9, ray.put(TrackChunk("0002", 3, 9, frames[3:]))))
    assert [r.frame_index for r in rest] == list(range(3, 9))
    for r, want in zip(rest, reference[3:]):
        np.testing.assert_array_equal(r.panoptic.ids, want.ids)
    assert ray.get(second.finish("0002")) == []
