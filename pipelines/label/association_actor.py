"""Association on Ray: actors that each own a shard of the videos (by hash of video_id).

The association is stateful per video, so it cannot be a stateless ``map_batches`` stage:
each :class:`AssociationActor` holds one :class:`operators.association.VideoOperator` per
video it owns and feeds it that video's chunks in frame order. Chunks travel as
``ObjectRef``\\ s: the driver (or the upstream stage) puts a :class:`TrackChunk` in the object
store and sends the actor its reference, wrapped in a list so Ray does not resolve it on the
way in; the actor holds the reference while the chunk is early and calls ``ray.get`` only when
its turn comes. So no pixels pass through the driver, and none wait in the actor's memory.

Faults. The actors restart when their process is lost (``max_restarts``) and Ray sends the
calls that were in flight again (``max_task_retries``). With ``checkpoint_dir`` set, every
video's state is saved into the output store after each push that consumed chunks, as
``<checkpoint_dir>/<video key>/<first frame it expects>.npz`` (:class:`CheckpointStore`): state
*at a chunk boundary*, so a pass that lost the actor's memory (its held chunks, the frames of a
call whose answer never arrived) resumes the video from a boundary whose frames were all
written (``resume_from``), on any node, instead of starting over. The tracker is deterministic,
so a resumed video has exactly the ids of an uninterrupted one.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import ray

from operators import fs
from operators.association import TrackChunk, TrackedFrame, TrackerConfig, VideoOperator
from operators.ids import video_key
from pipelines.commit import remove_tree
from pipelines.label.faults import MAX_TASK_RETRIES

CHECKPOINTS_DIR = "association"
"""The run's association checkpoints: ``_staging/<run>/association/`` (beside the videos' staging)."""


@dataclass(frozen=True)
class CheckpointStore:
    """Association checkpoints under a prefix of the output store: one file per (video, chunk
    boundary), ``<prefix>/<video key>/<boundary:08d>.npz``, where *boundary* is the first frame
    the saved state expects. Every listing is fresh (no cached directory listing)."""

    prefix: str

    def video_prefix(self, video_id: str) -> str:
        return fs.join(self.prefix, video_key(video_id))

    def uri(self, video_id: str, boundary: int) -> str:
        return fs.join(self.video_prefix(video_id), f"{int(boundary):08d}.npz")

    def boundaries(self, video_id: str) -> list[int]:
        """The boundaries of ``video_id`` that have a checkpoint, ascending."""
        filesystem, path = fs.fresh(self.video_prefix(video_id))
        try:
            names = filesystem.ls(path, detail=False)
        except FileNotFoundError:
            return []
        stems = (n.rstrip("/").rsplit("/", 1)[-1] for n in names)
        return sorted(int(n[:-4]) for n in stems if n.endswith(".npz") and n[:-4].isdigit())

    def save(self, video_id: str, op: VideoOperator) -> None:
        fs.write_bytes(self.uri(video_id, op.next_start), op.checkpoint())

    def load(self, video_id: str, boundary: int) -> VideoOperator:
        return VideoOperator.restore(fs.read_bytes(self.uri(video_id, boundary)), resolve=_get_first)

    def discard(self, video_id: str) -> None:
        remove_tree(self.video_prefix(video_id))


def actor_index(video_id: str, n_actors: int) -> int:
    """The shard that owns ``video_id``: CRC-32 of its UTF-8 name mod ``n_actors``.
    (Python's ``hash`` of a str is salted per process, so it cannot route across processes.)"""
    if n_actors < 1:
        raise ValueError("n_actors must be ≥ 1")
    return zlib.crc32(str(video_id).encode()) % n_actors


def answer_for_sender(frames: list[TrackedFrame], start: int, stop: int) -> list[TrackedFrame]:
    """What :meth:`AssociationActor.push` of chunk ``[start, stop)`` sends back: the tracked
    frames, those of that chunk without their pixels (:func:`_without_pixels`)."""
    return [_without_pixels(f) if start <= f.frame_index < stop else f for f in frames]


def _without_pixels(frame: TrackedFrame) -> TrackedFrame:
    """``frame`` without the pixels its label carries for the sink
    (:class:`pipelines.label.stages.FrameLabel`): the caller that pushed the frame's chunk still
    has them, so they need not travel back. Frames of chunks held earlier keep theirs."""
    label = frame.image_id
    if getattr(label, "rgb", None) is not None:
        frame.image_id = label._replace(rgb=None)
    return frame


def _get_first(handle: list) -> TrackChunk:
    return ray.get(handle[0])


@ray.remote
class AssociationActor:
    """Owns the videos routed to it; ``push`` one chunk reference, get tracked frames back."""

    def __init__(self, config_json: str | None = None, max_buffered_chunks: int = 8,
                 checkpoint_dir: str | None = None):
        self.config = TrackerConfig.from_json(config_json) if config_json else TrackerConfig()
        self.max_buffered_chunks = max_buffered_chunks
        self.checkpoints = CheckpointStore(checkpoint_dir) if checkpoint_dir else None
        self.videos: dict[str, VideoOperator] = {}

    def _operator(self, video_id: str, resume_from: int, max_held: int | None = None) -> VideoOperator:
        if video_id not in self.videos:
            held = self.max_buffered_chunks if max_held is None else max_held
            if resume_from:  # a video resumed by a later pass: its state at that boundary
                if self.checkpoints is None:
                    raise ValueError(f"video {video_id}: resuming at frame {resume_from} needs checkpoints")
                op = self.checkpoints.load(video_id, resume_from)
                op.max_buffered_chunks = held
            else:
                op = VideoOperator(video_id, self.config, max_buffered_chunks=held, resolve=_get_first)
            self.videos[video_id] = op
        return self.videos[video_id]

    def push(self, video_id: str, start: int, stop: int, chunk_ref: list, resume_from: int = 0,
             max_held: int | None = None) -> list[TrackedFrame]:
        """Offer chunk ``[start, stop)`` of ``video_id``; ``chunk_ref`` is ``[ObjectRef of a TrackChunk]``.
        Returns the frames that became trackable (possibly of earlier held chunks), in order.
        ``resume_from``: the video's first chunk in this pass starts there, from its checkpoint;
        ``max_held``: the most early chunks of this video to hold (:func:`pipelines.label.stages.early_chunk_bound`;
        None: the actor's ``max_buffered_chunks``)."""
        op = self._operator(video_id, resume_from, max_held)
        if start < op.next_start:  # sent again after its frames were tracked: nothing new
            return []
        if start in op.held_starts:  # sent again while held (its sender was retried): keep the newer reference
            op.release(start)
        before = op.next_start
        out = op.push(start, stop, chunk_ref)
        if self.checkpoints is not None and op.next_start != before:
            self.checkpoints.save(video_id, op)  # before the frames leave: a boundary is never ahead of them
        return answer_for_sender(out, start, stop)

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
    ``ObjectRef`` of the actor's answer (a list of :class:`TrackedFrame`). The actors restart
    when their process dies and the calls in flight are sent again (see the module doc).
    """

    def __init__(self, n_actors: int, config: TrackerConfig | None = None, max_buffered_chunks: int = 8,
                 checkpoint_dir: str | None = None, actor_options: dict | None = None):
        config_json = (config or TrackerConfig()).to_json()
        options = {"max_restarts": -1, "max_task_retries": MAX_TASK_RETRIES, **(actor_options or {})}
        self.actors = [AssociationActor.options(**options).remote(config_json, max_buffered_chunks, checkpoint_dir)
                       for _ in range(n_actors)]

    def actor_for(self, video_id: str):
        return self.actors[actor_index(video_id, len(self.actors))]

    def submit(self, video_id: str, start: int, stop: int, chunk_ref: ray.ObjectRef,
               resume_from: int = 0, max_held: int | None = None) -> ray.ObjectRef:
        return self.actor_for(video_id).push.remote(video_id, start, stop, [chunk_ref], resume_from, max_held)

    def track(self, chunk: TrackChunk, resume_from: int = 0, max_held: int | None = None) -> list[TrackedFrame]:
        """Send ``chunk`` (put in the object store from this process) to its video's actor and
        wait for the frames that became trackable (:meth:`AssociationActor.push`)."""
        return ray.get(self.submit(chunk.video_id, chunk.start, chunk.stop, ray.put(chunk), resume_from, max_held))

    def finish(self, video_id: str) -> ray.ObjectRef:
        return self.actor_for(video_id).finish.remote(video_id)
