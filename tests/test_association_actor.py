"""The Ray wrapper: routing by video id, chunk references in any order, resume from checkpoints."""
import numpy as np

from association_scenes import CAR, PERSON, Box, scrambled_video
from operators.association import TrackChunk, VideoTracker
from pipelines.label.association_actor import AssociationPool, CheckpointStore, actor_index


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
    # one checkpoint per push that consumed chunks, named by the frame the state expects next
    assert CheckpointStore(str(tmp_path / "ckpt")).boundaries("0000") == [9]


def test_a_new_pool_resumes_a_video_from_its_checkpoint_in_the_store(ray_local, tmp_path):
    ray = ray_local
    frames = frames_of(2)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    tracker = VideoTracker("0002")
    reference = [tracker.update(f) for f in frames]
    first = AssociationPool(1, checkpoint_dir=store.prefix)
    ray.get(first.submit("0002", 0, 3, ray.put(TrackChunk("0002", 0, 3, frames[:3]))))
    ray.get(first.submit("0002", 3, 6, ray.put(TrackChunk("0002", 3, 6, frames[3:6]))))
    for actor in first.actors:
        ray.kill(actor)                            # the actor and its memory are gone
    assert store.boundaries("0002") == [3, 6]
    second = AssociationPool(1, checkpoint_dir=store.prefix)
    rest = ray.get(second.submit("0002", 3, 9, ray.put(TrackChunk("0002", 3, 9, frames[3:])), resume_from=3))
    assert [r.frame_index for r in rest] == list(range(3, 9))
    for r, want in zip(rest, reference[3:]):
        np.testing.assert_array_equal(r.panoptic.ids, want.ids)
    assert ray.get(second.finish("0002")) == []
    store.discard("0002")
    assert store.boundaries("0002") == []


def test_a_chunk_sent_again_is_tracked_once(ray_local):
    """A retried sender offers a held chunk again (with a new reference) or a chunk already
    tracked: neither is an error, and no frame comes out twice."""
    ray = ray_local
    frames = frames_of(3)
    pool = AssociationPool(1)
    chunk = {s: TrackChunk("0003", s, s + 3, frames[s:s + 3]) for s in (0, 3, 6)}
    assert ray.get(pool.submit("0003", 6, 9, ray.put(chunk[6]))) == []       # early: held
    assert ray.get(pool.submit("0003", 6, 9, ray.put(chunk[6]))) == []       # again: replaces the held one
    first = ray.get(pool.submit("0003", 0, 3, ray.put(chunk[0])))
    assert ray.get(pool.submit("0003", 0, 3, ray.put(chunk[0]))) == []       # again after it was tracked
    rest = ray.get(pool.submit("0003", 3, 6, ray.put(chunk[3])))
    assert [f.frame_index for f in first + rest] == list(range(9))
