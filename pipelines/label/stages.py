"""The stages of the labelling graph, as Ray Data row / batch functions and callable classes.

Rows are video *chunks*; their columns, and the typed arrays that carry segment records, GT
records and times between the stages, are defined once in :mod:`pipelines.label.columns`:

* plan → one row per chunk: ``video_id, uri, frame_start, frame_end, chunk_index,
  frame_count, resume_from`` (the first frame this pass labels: a video resumed from an
  association checkpoint skips the chunks before it), ``error``/``stage`` and :data:`~columns.PLAN`
  (each frame's image id, the chunk's GT records);
* decode adds :data:`~columns.DECODE` (the frames, the frame before the chunk, each frame's time);
* segment adds :data:`~columns.SEGMENT` (id maps, segment records, embeddings);
* flow adds :data:`~columns.FLOW`;
* associate emits one row per chunk with the frames that became trackable (any number, possibly
  of earlier chunks): ``video_id, uri, frame_count`` and :data:`~columns.TRACKED` (track-id maps;
  the frames' image ids, times and GT records ride through the tracker with them);
* the sink (:mod:`pipelines.label.sink`) writes them to the video's staging prefix (segments
  rows with their time, source URI and topic; the frames' times; for each annotated frame its
  contingency table against the GT, which it reads itself) and emits one small row per video
  and batch (with the frames it wrote and the name of its segments part).

A row that failed keeps flowing with ``error`` and ``stage`` set and empty arrays, so the
driver learns about it from the sink's output like about any other row; ``lost`` marks a
failure caused by a lost process (not by the input), which the driver retries. Each stage adds its
operator's CPU time to ``t_<stage>`` (seconds, :func:`operator_clock`) for the time shares.
"""
from __future__ import annotations

import functools
import time
import traceback
from typing import Callable, NamedTuple

import numpy as np

from operators.errors import InputError, TubeflowError
from operators.formats.panoptic import PanopticFrame
from operators.ids import image_key, video_key
from operators.video import open_video
from pipelines.label import columns
from pipelines.label.columns import GtFrame, gt_columns, gt_of, segment_columns, segments_of, strings, time_columns, \
    times_of
from pipelines.label.ground_truth import GtRef, VideoGt, frame_image_id, read_video_gt
from pipelines.plan import plan_chunks

TIMED = ("decode", "segment", "flow", "associate", "sink")

# The stages' clock: CPU seconds of the calling process (all its threads, so torch's and
# OpenCV's intra-op threads count). Wall time would not do: on shared cores a stage's wall time
# includes the time its process waited while others ran, and the stages' sum then exceeds
# cores × wall, hiding every cost outside the operators (Ray, serialisation, start-up).
operator_clock = time.process_time


def describe(exc: BaseException) -> str:
    """One line for a failure row: tubeflow errors say where and what; anything else gets its type."""
    if isinstance(exc, TubeflowError):
        return str(exc)
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{at}"


def _empty(*shape_tail: int, dtype=np.uint8) -> np.ndarray:
    return np.zeros((0, *shape_tail), dtype)


def rows_of(batch: dict) -> list[dict]:
    """A numpy batch (dict of columns) as a list of row dicts."""
    n = len(next(iter(batch.values()))) if batch else 0
    return [{key: column[i] for key, column in batch.items()} for i in range(n)]


def batch_of(rows: list[dict]) -> dict:
    """Row dicts → a numpy batch; array columns whose shapes differ become object columns."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], np.ndarray):
            if all(v.shape == values[0].shape and v.dtype == values[0].dtype for v in values):
                out[key] = np.stack(values)
            else:
                column = np.empty(len(values), dtype=object)
                column[:] = values
                out[key] = column
        else:
            out[key] = np.array(values, dtype=object if isinstance(values[0], str) else None)
    return out


def _failed(row: dict, stage: str, exc: BaseException) -> dict:
    row["error"], row["stage"] = describe(exc), stage
    return row


def stage(name: str, *, blank: Callable[[dict], None] | None = None, skip_failed: bool = True,
          passed: Callable[[dict], dict] | None = None, failed: Callable[[dict, BaseException], dict] | None = None):
    """The skeleton every stage of the graph shares, around a function of one row (its last
    positional argument; a method's ``self`` comes first):

    * ``blank(row)`` first gives the row this stage's columns, empty, so that a row that failed
      (here or upstream) still has the schema of the others;
    * a row that failed upstream skips the work (when ``skip_failed``); ``passed(row)`` makes it
      this stage's output row (default: the row as it is);
    * an exception in the work becomes a failure row of this stage: ``failed(row, exc)``
      (default: ``error`` and ``stage`` set on the row);
    * the operator's CPU seconds go into the output row's ``t_<name>`` (:func:`operator_clock`).
    """
    def wrap(work: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(work)
        def run(*args, **kwargs) -> dict:
            *owner, row = args
            start = operator_clock()
            row = dict(row)
            if blank is not None:
                blank(row)
            if skip_failed and row["error"]:
                out = passed(row) if passed is not None else row
            else:
                try:
                    out = work(*owner, row, **kwargs)
                except Exception as exc:
                    out = failed(row, exc) if failed is not None else _failed(row, name, exc)
            out[f"t_{name}"] = operator_clock() - start
            return out
        return run
    return wrap


def map_rows(batch: dict, row_stage: Callable[[dict], dict], drop: tuple[str, ...] = ()) -> dict:
    """A batch stage from a row stage: every row of ``batch`` through it, less the ``drop`` columns."""
    rows = []
    for row in rows_of(batch):
        out = row_stage(row)
        for key in drop:
            out.pop(key, None)
        rows.append(out)
    return batch_of(rows)


def lost_process(exc: BaseException) -> bool:
    """Whether ``exc`` says a process (worker, actor, node, an object's owner) was lost, not
    that the input is bad: such a failure is worth another try; an input error is not."""
    from ray.exceptions import RayError, RayTaskError

    if isinstance(exc, RayTaskError):  # an exception raised inside the call: judge what it wraps
        cause = exc.cause
        return cause is not None and cause is not exc and lost_process(cause)
    return isinstance(exc, RayError)


def early_chunk_bound(frame_count: int, resume_from: int, chunk_frames: int) -> int:
    """The most chunks of one video an association actor can ever hold early in a pass: the
    pass sends the video's chunks from ``resume_from`` on, one per ``chunk_frames`` frames, and
    the one it waits for is never held, so all but one. More would be a chunk sent that the plan
    does not have (an :class:`~operators.errors.InputError` for the video, not unbounded memory:
    every chunk held pins its frames in the object store)."""
    return max(0, -(-(frame_count - resume_from) // chunk_frames) - 1)


# ---------------------------------------------------------------------------- ground truth
class FrameLabel(NamedTuple):
    """What the tracker carries through untouched for the writers as a frame's ``image_id``
    (a frame can come back with a later chunk's row): its image id, time and GT record, and
    its pixels ``(H, W, 3) uint8`` where the sink renders the frame (:func:`renders`)."""

    image_id: str
    timestamp_ns: int | None
    gt: GtFrame | None = None
    rgb: np.ndarray | None = None


RENDER = ("", "overlay", "thumbnail")
"""What the sink renders from the decoded frames (:attr:`pipelines.label.config.LabelConfig.render`):
nothing, every frame (the overlay video, whose middle frame is also the thumbnail), or only the
middle frame (the thumbnail)."""


def renders(render: str, frame_index: int, frame_count: int) -> bool:
    """Whether the sink renders frame ``frame_index`` of a video of ``frame_count`` frames; such a
    frame's pixels travel to the sink with it (:class:`FrameLabel`, the ``rgb`` column)."""
    return render == "overlay" or (render == "thumbnail" and frame_index == thumbnail_frame(frame_count))


def thumbnail_frame(frame_count: int) -> int:
    """The frame a video's thumbnail shows: its middle one."""
    return frame_count // 2


def _gt_record(label: tuple) -> GtFrame | None:
    return label[2] if len(label) > 2 else None


# ---------------------------------------------------------------------------- plan, decode
def plan_video(video: dict, chunk_frames: int, image_id_format: str) -> list[dict]:
    """One video row (``video_id, uri, gt`` (its :class:`~pipelines.label.ground_truth.GtRef` as
    JSON text, empty without GT), ``resume_from``) → its chunk rows from ``resume_from`` on, or one
    error row. The video's GT is read here (a GT that cannot be read fails the video in stage
    ``gt``): it names the frames, and each annotated frame's record goes on its chunk's row."""
    resume_from = int(video.get("resume_from") or 0)
    base = {"video_id": video["video_id"], "uri": video["uri"], "frame_start": 0, "frame_end": 0,
            "chunk_index": -1, "frame_count": 0, "resume_from": resume_from, "error": "", "stage": ""}
    columns.blank(columns.PLAN)(base)
    try:
        gt = read_video_gt(GtRef.from_text(video["gt"])) if video.get("gt") else VideoGt()
    except Exception as exc:
        return [_failed(base, "gt", exc)]
    try:
        video_key(video["video_id"])  # an id that cannot name a path fails here, before any work
        chunks = plan_chunks(video["video_id"], video["uri"], chunk_frames)
        annotated = {f.image.frame_index: f for f in gt.frames}
        per_chunk = [[frame_image_id(gt.names, image_id_format, chunk.video_id, i)
                      for i in range(chunk.frame_start, chunk.frame_end)] for chunk in chunks]
        image_ids = [i for ids in per_chunk for i in ids]
        for image_id in image_ids:
            image_key(image_id)
        if len({image_key(i) for i in image_ids}) != len(image_ids):
            raise InputError(f"video {video['video_id']}", "two frames have the same image id")
    except Exception as exc:  # an undecodable or empty video, an id that cannot be a path: a failure row
        return [_failed(base, "plan", exc)]
    count = chunks[-1].frame_end
    return [{**chunk.to_row(), "frame_count": count, "image_ids": strings(ids),
             **gt_columns(annotated[i] for i in range(chunk.frame_start, chunk.frame_end) if i in annotated),
             "resume_from": resume_from, "error": "", "stage": ""}
            for chunk, ids in zip(chunks, per_chunk) if chunk.frame_start >= resume_from]


@stage("decode", blank=columns.blank(columns.DECODE))
def decode_chunk(row: dict) -> dict:
    """Decode the chunk's frames plus the frame before it (for the boundary flow)."""
    a, b = int(row["frame_start"]), int(row["frame_end"])
    with open_video(row["uri"]) as source:
        frames, times = source.read_timed(max(a - 1, 0), b)
    row["prev_rgb"], row["rgb"] = (frames[:1], frames[1:]) if a > 0 else (_empty(*frames.shape[1:]), frames)
    row.update(time_columns(times[1:] if a > 0 else times))
    return row


def match_threads_to_cpus() -> int:
    """Limit torch and OpenCV to the whole CPUs Ray gave this actor (at least one).

    Ray sets OMP_NUM_THREADS for torch, but OpenCV (DIS flow, video decoding helpers) still
    starts one thread per core; several actors sharing the cores then oversubscribe them.
    torch is set only where it is already imported: importing it just to set its threads
    would cost an actor that never uses it (DIS flow) ~2 s of CPU and ~150 MB at start-up.
    """
    import sys

    import cv2

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():  # a local run's process (pipelines/label/local.py) set its own
        return cv2.getNumThreads()
    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    cv2.setNumThreads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


# ---------------------------------------------------------------------------- segment
class SegmentChunks:
    """Ray Data wrapper of :class:`operators.segmentation.host.SegmentationHost` for chunk rows.

    The host is built once per actor; it chooses CUDA when Ray gave this actor a GPU.
    """

    def __init__(self, host_kwargs: dict):
        from operators.segmentation.host import open_segmenter

        self.host = open_segmenter(**host_kwargs)
        match_threads_to_cpus()  # after the host: it imports torch

    def __call__(self, batch: dict) -> dict:
        return map_rows(batch, self.segment)

    @stage("segment", blank=columns.blank(columns.SEGMENT))
    def segment(self, row: dict) -> dict:
        results = self.host.segment(list(row["rgb"]), row["image_ids"].tolist())
        row["panoptic"] = np.stack([r.ids.astype(np.int32) for r in results])
        row.update(segment_columns(r.segments for r in results))
        row["embeddings"] = np.concatenate([r.embeddings.astype(np.float32) for r in results])
        return row


# ---------------------------------------------------------------------------- flow
class FlowChunks:
    """Flow current → previous for every frame of a chunk; the first frame of a chunk uses the
    previous chunk's last frame (``prev_rgb``), so chunking does not change the flow."""

    def __init__(self, flow: str, options: dict):
        from operators.flow import make_flow

        self.estimate = make_flow(flow, **options)
        match_threads_to_cpus()  # after the estimator: RAFT imports torch, DIS does not

    def __call__(self, batch: dict) -> dict:
        return map_rows(batch, self.flow, drop=("prev_rgb",))  # the boundary frame is used up here

    @stage("flow", blank=columns.blank(columns.FLOW))
    def flow(self, row: dict) -> dict:
        rgb, prev = row["rgb"], row["prev_rgb"]
        flows = np.zeros((*rgb.shape[:3], 2), np.float32)
        for i in range(len(rgb)):
            previous = rgb[i - 1] if i > 0 else (prev[0] if len(prev) else None)
            if previous is not None:
                flows[i] = self.estimate(rgb[i], previous)
        row["flow"] = flows
        return row


# ---------------------------------------------------------------------------- associate
def _tracked_row(row: dict, frames: list, error: str = "", stage: str = "", failed: int = 0,
                 lost: bool = False, render: str = "") -> dict:
    """The associate stage's output for one input chunk: the frames that became trackable (any
    number, possibly of earlier chunks the actor was holding), as one row. One row per chunk, not
    per frame: Ray Data moves every row out of this stage as a block of its own (one chunk per
    block, see :func:`pipelines.label.graph.ray_data_settings`), and per-frame blocks made the
    executor's per-block cost the bottleneck on short clips (100 videos x 10 frames: the upstream
    stages were done after 22 s, the run after 84 s).

    The pixels of the frames the sink renders (``render``, :func:`renders`) go in ``rgb`` with
    their frame indices in ``rgb_frames``: from the frame's label when it has them (a frame of a
    chunk held by the association actor), else from this chunk's decoded frames."""
    good = [f for f in frames if not f.error]
    shape = good[0].panoptic.ids.shape if good else (1, 1)
    return {"video_id": row["video_id"], "uri": row["uri"], "frame_count": int(row["frame_count"]),
            "frame_indices": np.array([f.frame_index for f in frames], np.int64),
            "image_ids": strings(f.image_id[0] for f in frames),
            **time_columns(f.image_id[1] for f in frames),
            "frame_errors": strings(f.error or "" for f in frames),
            "panoptic": np.stack([f.panoptic.ids.astype(np.int32) if not f.error else np.zeros(shape, np.int32)
                                  for f in frames]) if frames else columns.TRACKED["panoptic"].empty(),
            **segment_columns(f.panoptic.segments if not f.error else [] for f in frames),
            **gt_columns(g for g in map(_gt_record, (f.image_id for f in frames)) if g is not None),
            **_pixel_columns(row, good, render),
            "error": error, "stage": stage, "failed_frames": int(failed), "lost": bool(lost),
            **{f"t_{s}": float(row.get(f"t_{s}", 0.0)) for s in TIMED if s != "sink"}}


def _pixel_columns(row: dict, frames: list, render: str) -> dict[str, np.ndarray]:
    """``rgb (k, H, W, 3) uint8`` and ``rgb_frames (k,) int64`` of the ``frames`` the sink renders."""
    count, start, end = int(row["frame_count"]), int(row.get("frame_start", 0)), int(row.get("frame_end", 0))
    indices, pixels = [], []
    for f in frames:
        if not renders(render, f.frame_index, count):
            continue
        rgb = getattr(f.image_id, "rgb", None)  # a frame of a chunk the actor held carries its pixels
        if rgb is None and start <= f.frame_index < end and len(row.get("rgb", ())):
            rgb = row["rgb"][f.frame_index - start]  # a frame of this chunk: its decoded pixels
        if rgb is None:
            raise RuntimeError(f"video {row['video_id']} frame {f.frame_index}: its pixels did not reach the sink")
        indices.append(f.frame_index)
        pixels.append(rgb)
    return {"rgb_frames": np.array(indices, np.int64),
            "rgb": np.stack(pixels) if pixels else columns.TRACKED["rgb"].empty()}


class AssociateChunks:
    """Sends each chunk to the association actor that owns its video and emits the frames that
    became trackable (possibly of earlier chunks it was holding), in frame order.

    The chunk goes into the object store from this worker and only its reference travels to
    the actor (:class:`pipelines.label.association_actor.AssociationPool`): no pixels pass through
    the driver. ``pool`` is built by the driver and shared by every replica of this stage; a
    run without Ray passes its in-process association instead (:class:`pipelines.label.local.LocalAssociation`):
    anything with ``track(chunk, resume_from, max_held)`` → the frames that became trackable.
    """

    def __init__(self, pool, chunk_frames: int, render: str = ""):
        self.pool, self.chunk_frames, self.render = pool, chunk_frames, render

    def __call__(self, batch: dict) -> dict:
        return map_rows(batch, self.associate)

    @staticmethod
    def _failed_upstream(row: dict) -> dict:
        """A chunk that failed upstream: all its frames failed (all of the video's for a plan error)."""
        n = int(row["frame_end"]) - int(row["frame_start"])
        failed = max(n, 1) if row["chunk_index"] >= 0 else int(row["frame_count"]) or 1
        return _tracked_row(row, [], row["error"], row["stage"], failed)

    @staticmethod
    def _lost_chunk(row: dict, exc: BaseException) -> dict:
        """The association lost the chunk; ``lost`` when a process went, which a later pass retries."""
        n = int(row["frame_end"]) - int(row["frame_start"])
        return _tracked_row(row, [], describe(exc), "associate", n, lost=lost_process(exc))

    @stage("associate", passed=_failed_upstream, failed=_lost_chunk)
    def associate(self, row: dict) -> dict:
        chunk = track_chunk(row, self.render)
        held = early_chunk_bound(int(row["frame_count"]), int(row["resume_from"]), self.chunk_frames)
        return _tracked_row(row, self.pool.track(chunk, int(row["resume_from"]), held), render=self.render)


def track_chunk(row: dict, render: str = ""):
    """A chunk row (after flow) as the tracker's :class:`~operators.association.TrackChunk`. The
    tracker carries each frame's ``image_id`` through untouched for the writers: a
    :class:`FrameLabel` with the frame's image id, time and GT record (and its pixels where the
    sink renders it, ``render``), since a frame can come back with a later chunk's row."""
    from operators.association import TrackChunk, TrackerFrame

    ids, embeddings, start = row["panoptic"], row["embeddings"], int(row["frame_start"])
    frames, offset, gt, count = [], 0, gt_of(row), int(row["frame_count"])
    pixels = list(row["rgb"])  # one view per frame, shared by the tracker and the label: pickled once
    labels = [FrameLabel(image_id, time, gt.get(start + i), pixels[i] if renders(render, start + i, count) else None)
              for i, (image_id, time) in enumerate(zip(row["image_ids"].tolist(), times_of(row)))]
    for i, (label, infos) in enumerate(zip(labels, segments_of(row, len(labels)))):
        vectors = embeddings[offset:offset + len(infos)] if embeddings.ndim == 2 else None
        offset += len(infos)
        index = start + i
        frames.append(TrackerFrame(index, PanopticFrame(ids[i], infos), pixels[i],
                                   row["flow"][i] if index > 0 else None,
                                   {s.id: v for s, v in zip(infos, vectors)}
                                   if vectors is not None and vectors.shape[1] else None, label))
    return TrackChunk(row["video_id"], start, int(row["frame_end"]), frames)
