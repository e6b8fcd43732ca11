"""Association on Ray: actors that each own a shard of the videos (by hash of video_id).

The association is stateful per video, so it cannot be a stateless ``map_batches`` stage:
each :class:`AssociationActor` holds one :class:`operators.association.VideoOperator` per
video it owns and feeds it that video's chunks in frame order. Chunks travel as
``ObjectRef``\\ s: the driver (or the upstream stage) puts a :class:`TrackChunk` in the object
store and sends the actor its reference, wrapped in a list so Ray does not resolve it on the
way in; the actor holds the reference while the chunk is early and calls ``ray.get`` only when
its turn comes. So no pixels pass through the driver, and none wait in the actor's memory.

With ``checkpoint_dir`` set, every video's state is written there (atomically) after each
chunk it consumed; an actor that was lost and restarted finds the file and resumes the video
from the next chunk instead of restarting it.
"""
from __future__ import annotations

import zlib

import ray

from operators import fs
from operators.ids import video_key
from operators.association import TrackChunk, TrackedFrame, TrackerConfig, VideoOperator


def actor_index(video_id: str, n_actors: int) -> int:
    """The shard that owns ``video_id``: CRC-32 of its UTF-8 name mod ``n_actors``.
    (Python's ``hash`` of a str is salted per process, so it cannot route across processes.)"""
    if n_actors < 1:
        raise ValueError("n_actors must be ≥ 1")
    return zlib.crc32(str(video_id).encode()) % n_actors


def _get_first(handle: list) -> TrackChunk:
    return ray.get(handle[0])


@ray.remote
class AssociationActor:
    """Owns the videos routed to it; ``push`` one chunk reference, get tracked frames back."""

    def __init__(self, config_json: str | None = None, max_buffered_chunks: int = 8,
                 checkpoint_dir: str | None = None):
        self.config = TrackerConfig.from_json(config_json) if config_json else TrackerConfig()
        self.max_buffered_chunks = max_buffered_chunks
        self.checkpoint_dir = checkpoint_dir
        self.videos: dict[str, VideoOperator] = {}

    def _checkpoint_uri(self, video_id: str) -> str:
        return fs.join(self.checkpoint_dir, f"{video_key(video_id)}.association.npz")

    def _operator(self, video_id: str) -> VideoOperator:
        if video_id not in self.videos:
            if self.checkpoint_dir and fs.exists(self._checkpoint_uri(video_id)):
                op = VideoOperator.restore(fs.read_bytes(self._checkpoint_uri(video_id)), resolve=_get_first)
                op.max_buffered_chunks = self.max_buffered_chunks
            else:
                op = VideoOperator(video_id, self.config, max_buffered_chunks=self.max_buffered_chunks,
                                   resolve=_get_first)
            self.videos[video_id] = op
        return self.videos[video_id]

    def push(self, video_id: str, start: int, stop: int, chunk_ref: list) -> list[TrackedFrame]:
        """Offer chunk ``[start, stop)`` of ``video_id``; ``chunk_ref`` is ``[ObjectRef of a TrackChunk]``.
        Returns the frames that became trackable (possibly of earlier held chunks), in order."""
        op = self._operator(video_id)
        if start < op.next_start:  # resent after a restore: already consumed before the checkpoint
            return []
        before = op.next_start
        out = op.push(start, stop, chunk_ref)
        if self.checkpoint_dir and op.next_start != before:
            fs.write_bytes(self._checkpoint_uri(video_id), op.checkpoint())
        return out

    def checkpoint(self, video_id: str) -> bytes:
        return self._operator(video_id).checkpoint()

    def restore(self, video_id: str, data: bytes) -> int:
        """Replace the state of ``video_id``; returns the first frame it now expects."""
        op = VideoOperator.restore(data, resolve=_get_first)
        op.max_buffered_chunks = self.max_buffered_chunks
        self.videos[video_id] = op
        return op.next_start

    def finish(self, video_id: str) -> list[int]:
        """Forget a finished video; returns the starts of chunks still held (not consumed)."""
        op = self.videos.pop(video_id, None)
        return [] if op is None else op.held_starts


class AssociationPool:
    """``n_actors`` association actors and the routing of videos to them.

    ``submit`` takes the ``ObjectRef`` of a :class:`TrackChunk` (not the chunk) and returns the
    ``ObjectRef`` of the actor's answer (a list of :class:`TrackedFrame`).
    """

    def __init__(self, n_actors: int, config: TrackerConfig | None = None, max_buffered_chunks: int = 8,
                 checkpoint_dir: str | None = None, actor_options: dict | None = None):
        config_json = (config or TrackerConfig()).to_json()
        self.actors = [AssociationActor.options(**(actor_options or {})).remote(
            config_json, max_buffered_chunks, checkpoint_dir) for _ in range(n_actors)]

    def actor_for(self, video_id: str):
        return self.actors[actor_index(video_id, len(self.actors))]

    def submit(self, video_id: str, start: int, stop: int, chunk_ref: ray.ObjectRef) -> ray.ObjectRef:
        return self.actor_for(video_id).push.remote(video_id, start, stop, [chunk_ref])

    def finish(self, video_id: str) -> ray.ObjectRef:
        return self.actor_for(video_id).finish.remote(video_id)
