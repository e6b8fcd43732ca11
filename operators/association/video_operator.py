"""One video's association as a stateful operator: chunks in any order, frames out in order.

A pipeline cuts videos into chunks of frames ``[start, stop)`` and processes them in parallel
upstream (decode, segment, flow), so chunks reach the association in any order. The tracker
needs frame t-1 to label frame t, so :class:`VideoOperator` consumes chunks strictly in frame
order: a chunk that is early is held (as whatever handle the caller gave — in the Ray actor an
``ObjectRef``, so no pixels wait in memory) until the chunks before it have come, and at most
``max_buffered_chunks`` are held.

Between chunks the whole state can be saved with :meth:`VideoOperator.checkpoint` (bytes: an
``.npz`` of numpy arrays plus one JSON document; no pickle) and resumed with
:meth:`VideoOperator.restore`, so a lost actor continues a video instead of restarting it.
Held (early) chunks are not part of a checkpoint: they were not consumed, and the caller sends
them again.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Callable

import numpy as np

from operators.association.config import TrackerConfig
from operators.association.methods import make_tracker, tracker_from_state
from operators.association.track import TrackerFrame
from operators.errors import InputError, TubeflowError
from operators.formats.panoptic import PanopticFrame

CHECKPOINT_VERSION = 1
_META_KEY = "__meta__"


@dataclass
class TrackChunk:
    """Frames ``start ≤ frame_index < stop`` of one video, in frame order."""

    video_id: str
    start: int
    stop: int
    frames: list[TrackerFrame]


@dataclass
class TrackedFrame:
    """The tracker's answer for one frame: ``panoptic`` with track ids, or ``error`` (a rejected frame)."""

    video_id: str
    frame_index: int
    image_id: object
    panoptic: PanopticFrame | None
    error: str | None = None


def _identity(chunk):
    return chunk


class VideoOperator:
    """Holds one video's tracker (:class:`VideoTracker`, or :class:`LearnedTracker` when
    ``config.method`` is ``"learned"``) and feeds it chunks in frame order.

    ``resolve`` turns what :meth:`push` receives into a :class:`TrackChunk` when its turn
    comes (identity by default; the Ray actor passes ``ray.get``). The first chunk expected
    starts at ``first_frame``.
    """

    def __init__(self, video_id: str, config: TrackerConfig | None = None, first_frame: int = 0,
                 max_buffered_chunks: int = 8, resolve: Callable[[object], TrackChunk] = _identity):
        if max_buffered_chunks < 0:
            raise ValueError("max_buffered_chunks must be ≥ 0")
        self.video_id = str(video_id)
        self.tracker = make_tracker(video_id, config)
        self.next_start = int(first_frame)
        self.max_buffered_chunks = max_buffered_chunks
        self.resolve = resolve
        self._held: dict[int, tuple[int, object]] = {}  # start → (stop, handle)

    @property
    def held_starts(self) -> list[int]:
        """Starts of the chunks that arrived early and wait for their predecessors."""
        return sorted(self._held)

    def release(self, start: int) -> None:
        """Forget the held chunk starting at ``start`` (its sender will offer it again)."""
        self._held.pop(start, None)

    def push(self, start: int, stop: int, chunk: object) -> list[TrackedFrame]:
        """Offer chunk ``[start, stop)``; returns the frames this made trackable, in order.

        Raises :class:`InputError` (naming the video and frames) for a chunk that overlaps one
        already consumed or held, and when holding it would exceed ``max_buffered_chunks``.
        Bad frames inside a chunk do not raise: they come back as :class:`TrackedFrame` with
        ``error`` set, and the frames after them are tracked as if they had not come.
        """
        where = f"video {self.video_id} frames {start}..{stop - 1}"
        if stop <= start:
            raise InputError(where, "empty chunk range")
        if start < self.next_start:
            raise InputError(where, f"chunk overlaps frames already tracked (next expected frame is {self.next_start})")
        if start != self.next_start:
            if start in self._held:
                raise InputError(where, "chunk arrived twice")
            if len(self._held) >= self.max_buffered_chunks:
                raise InputError(where, f"{len(self._held)} early chunks are already held waiting for frame "
                                        f"{self.next_start} (max_buffered_chunks={self.max_buffered_chunks})")
            self._held[start] = (stop, chunk)
            return []
        out = self._consume(start, stop, chunk)
        while self.next_start in self._held:
            held_start = self.next_start
            held_stop, handle = self._held.pop(held_start)
            out.extend(self._consume(held_start, held_stop, handle))
        return out

    def _consume(self, start: int, stop: int, handle: object) -> list[TrackedFrame]:
        chunk = self.resolve(handle)
        if chunk.video_id != self.video_id or (chunk.start, chunk.stop) != (start, stop):
            raise InputError(f"video {self.video_id} frames {start}..{stop - 1}",
                             f"chunk holds video {chunk.video_id} frames {chunk.start}..{chunk.stop - 1}")
        out = []
        for frame in chunk.frames:
            try:
                if not start <= frame.frame_index < stop:
                    raise InputError(f"video {self.video_id} frame {frame.frame_index}",
                                     f"frame lies outside its chunk {start}..{stop - 1}")
                out.append(TrackedFrame(self.video_id, frame.frame_index, frame.image_id, self.tracker.update(frame)))
            except TubeflowError as exc:
                out.append(TrackedFrame(self.video_id, frame.frame_index, frame.image_id, None, str(exc)))
        self.next_start = stop
        return out

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self) -> bytes:
        """The state after the last consumed chunk, as bytes (npz of arrays + JSON, no pickle)."""
        meta, arrays = self.tracker.state()
        doc = {"version": CHECKPOINT_VERSION, "next_start": self.next_start,
               "max_buffered_chunks": self.max_buffered_chunks, "tracker": meta}
        payload = dict(arrays)
        payload[_META_KEY] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **payload)
        return buf.getvalue()

    @classmethod
    def restore(cls, data: bytes, resolve: Callable[[object], TrackChunk] = _identity) -> "VideoOperator":
        """The operator saved by :meth:`checkpoint`; it expects the chunk after the last consumed one."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            doc = json.loads(arrays.pop(_META_KEY).tobytes())
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
            raise InputError("association checkpoint", f"not a tubeflow association checkpoint: {exc}") from None
        if doc.get("version") != CHECKPOINT_VERSION:
            raise InputError("association checkpoint", f"unsupported checkpoint version {doc.get('version')}")
        tracker = tracker_from_state(doc["tracker"], arrays)
        op = cls(tracker.video_id, tracker.config, doc["next_start"], doc["max_buffered_chunks"], resolve)
        op.tracker = tracker
        return op
