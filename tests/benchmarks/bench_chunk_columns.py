"""The (de)serialisation of a chunk row's structured columns: the typed numpy columns
(:mod:`pipelines.label.columns`) vs the JSON strings they replaced, in the same run, no models.

One chunk of 32 frames at 1024×2048 with 40 segments per frame (areas and boxes of that size,
model scores) and a GT record every 5th frame of the video (6 of the chunk's frames, 40 GT
segments each) goes
through every place the rows are encoded or read, the way the graph does it:

* plan writes the image ids and GT records, decode the frame times, segment the segment
  records; associate reads them all into the tracker's chunk and writes the tracked frames'
  columns back; the sink reads those;
* between two stages (decode → segment → flow → associate → sink: four moves; plan and decode
  are one fused task) the row goes through Ray Data's Arrow conversion: the numpy batch becomes an
  Arrow block (``BlockAccessor.batch_to_block``), which is serialised as Ray's object store does
  (Ray's own Arrow table reducer, pickle protocol 5 with out-of-band buffers) and read back into
  a numpy batch (``to_batch_format("numpy")``).

**before** is a transcription of the replaced code (``json.dumps`` of ``SegmentInfo.to_json``
records, ``json.loads`` + ``SegmentInfo.from_json``, GT records as JSON dicts); **after** is the
pipeline's own code (:func:`pipelines.label.stages.track_chunk`, :func:`~pipelines.label.stages._tracked_row`,
:func:`pipelines.label.sink.tracked_frames`, the codecs of :mod:`pipelines.label.columns`). The
pixel columns (frames, id maps, flow) are the same tensors both ways and are left out (1×1 here),
so the figures are the structured columns alone. Both ways must hand the sink the same frames
(asserted). The same without GT (a run without ``--gt``). CPU time of this process, best of ``ROUNDS`` rounds of ``CHUNKS`` chunks each.

Run: ``PYTHONPATH=. python -m pytest -m benchmark -s tests/benchmarks/bench_chunk_columns.py``
"""
from __future__ import annotations

import gc
import json
import pickle
import time

import numpy as np
import pytest

from operators.association import TrackChunk, TrackerFrame
from operators.association.video_operator import TrackedFrame
from operators.formats.panoptic import PanopticFrame, SegmentInfo
from operators.formats.vps_layout import VpsImage
from pipelines.label.columns import GtFrame, gt_columns, segment_columns, strings, time_columns
from pipelines.label.sink import tracked_frames
from pipelines.label.stages import FrameLabel, _tracked_row, batch_of, rows_of, track_chunk

pytestmark = pytest.mark.benchmark
FRAMES, SEGMENTS, HEIGHT, WIDTH, ANNOTATE_EVERY, EMBEDDING = 32, 40, 1024, 2048, 5, 8
CHUNKS, ROUNDS = 20, 7
SCALARS = {"video_id": "0000", "uri": "s3://fleet/videos/0000.mp4", "frame_start": 32, "frame_end": 64,
           "chunk_index": 1, "frame_count": 300, "resume_from": 0, "error": "", "stage": ""}


def _segments(rng, scored: bool) -> list[SegmentInfo]:
    out = []
    for k in range(SEGMENTS):
        x, y = int(rng.integers(0, WIDTH - 64)), int(rng.integers(0, HEIGHT - 64))
        w, h = int(rng.integers(1, WIDTH - x)), int(rng.integers(1, HEIGHT - y))
        category = int(rng.integers(0, 19))
        out.append(SegmentInfo(category * 1000 + k + 1, category, int(rng.integers(1, w * h + 1)), (x, y, w, h),
                               int(rng.random() < 0.05), float(rng.random()) if scored else None))
    return out


def _chunk(seed: int = 0, with_gt: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    start = SCALARS["frame_start"]
    indices = range(start, start + FRAMES)
    return {"image_ids": [f"0000_{i:06d}_leftImg8bit" for i in indices],
            "times": [1_700_000_000_000_000_000 + 33_333_333 * i for i in indices],
            "segments": [_segments(rng, True) for _ in indices],
            "gt": {i: GtFrame(VpsImage(f"0000_{i:06d}_leftImg8bit", f"0000_{i:06d}_leftImg8bit.png", WIDTH, HEIGHT,
                                       "0000", i), f"s3://fleet/gt/panoptic/0000_{i:06d}_gtFine_panoptic.png",
                              _segments(rng, False))
                   for i in indices if with_gt and i % ANNOTATE_EVERY == 0},
            "pixels": {"rgb": np.zeros((FRAMES, 1, 1, 3), np.uint8), "prev_rgb": np.zeros((1, 1, 1, 3), np.uint8),
                       "panoptic": np.zeros((FRAMES, 1, 1), np.int32), "flow": np.zeros((FRAMES, 1, 1, 2), np.float32),
                       "embeddings": np.ones((FRAMES * SEGMENTS, EMBEDDING), np.float32)}}


def _arrow_hop(row: dict) -> dict:
    """One row from a stage to the next as Ray Data moves it (see the module doc)."""
    from ray.data.block import BlockAccessor

    try:  # Ray's own reducer for Arrow tables in its object store
        from ray._private.arrow_serialization import _arrow_table_reduce
    except ImportError:  # pragma: no cover - another Ray: plain pickling of the table
        def _arrow_table_reduce(table):
            return (lambda t: t), (table,)
    block = BlockAccessor.batch_to_block(batch_of([row]))
    restore, args = _arrow_table_reduce(block)
    buffers = []
    data = pickle.dumps(args, protocol=5, buffer_callback=buffers.append)
    block = restore(*pickle.loads(data, buffers=buffers))
    (out,) = rows_of(BlockAccessor.for_block(block).to_batch_format("numpy"))
    return out


def _track(chunk: TrackChunk) -> list[TrackedFrame]:
    """Stands in for the tracker: every frame back with its segments (same both ways)."""
    return [TrackedFrame(chunk.video_id, f.frame_index, f.image_id, f.panoptic) for f in chunk.frames]


# ---------------------------------------------------------------------------- before: JSON columns
def _old_plan(c: dict) -> dict:
    records = {i: g.to_json() for i, g in c["gt"].items()}  # the plan task held GT records as JSON dicts
    start = SCALARS["frame_start"]
    return {**SCALARS, "image_ids": json.dumps(c["image_ids"]),
            "gt_frames": json.dumps([records.get(i) for i in range(start, start + FRAMES)])}


def _old_segment(row: dict, c: dict) -> dict:
    json.loads(row["image_ids"])  # the host's image ids
    row["segments"] = json.dumps([[s.to_json() for s in segments] for segments in c["segments"]])
    return row


def _old_track_chunk(row: dict) -> TrackChunk:
    ids, segments, embeddings = row["panoptic"], json.loads(row["segments"]), row["embeddings"]
    frames, offset = [], 0
    labels = map(FrameLabel, json.loads(row["image_ids"]), json.loads(row["timestamps"]),
                 json.loads(row.get("gt_frames") or "[]") or [None] * len(segments))
    for i, (image_id, segs) in enumerate(zip(labels, segments)):
        infos = [SegmentInfo.from_json(s) for s in segs]
        vectors = embeddings[offset:offset + len(infos)] if embeddings.ndim == 2 else None
        offset += len(infos)
        index = int(row["frame_start"]) + i
        frames.append(TrackerFrame(index, PanopticFrame(ids[i], infos), row["rgb"][i],
                                   row["flow"][i] if index > 0 else None,
                                   {s.id: v for s, v in zip(infos, vectors)}
                                   if vectors is not None and vectors.shape[1] else None, image_id))
    return TrackChunk(row["video_id"], int(row["frame_start"]), int(row["frame_end"]), frames)


def _old_tracked_row(row: dict, frames: list[TrackedFrame]) -> dict:
    good = [f for f in frames if not f.error]
    shape = good[0].panoptic.ids.shape if good else (1, 1)
    return {"video_id": row["video_id"], "uri": row["uri"], "frame_count": int(row["frame_count"]),
            "frame_indices": np.array([f.frame_index for f in frames], np.int64),
            "image_ids": json.dumps([f.image_id[0] for f in frames]),
            "timestamps": json.dumps([f.image_id[1] for f in frames]),
            "gt_frames": json.dumps([f.image_id[2] if len(f.image_id) > 2 else None for f in frames]),
            "frame_errors": json.dumps([f.error or "" for f in frames]),
            "panoptic": np.stack([f.panoptic.ids.astype(np.int32) if not f.error else np.zeros(shape, np.int32)
                                  for f in frames]),
            "segments": json.dumps([[s.to_json() for s in f.panoptic.segments] if not f.error else []
                                    for f in frames]),
            "error": "", "stage": "", "failed_frames": 0, "lost": False}


def _old_sink_frames(r: dict) -> list[tuple]:
    records = json.loads(r["gt_frames"])
    frames = zip(r["frame_indices"], json.loads(r["image_ids"]), json.loads(r["timestamps"]),
                 json.loads(r["frame_errors"]), r["panoptic"], json.loads(r["segments"]),
                 records or [None] * len(r["frame_indices"]))
    # what the sink then built of them: the frame's SegmentInfos, the annotated frames' GtFrames
    return [(int(index), image_id, timestamp, error, ids, [SegmentInfo.from_json(s) for s in segments],
             GtFrame.from_json(gt) if gt is not None else None)
            for index, image_id, timestamp, error, ids, segments, gt in frames]


def _before(c: dict, clock: dict) -> list[tuple]:
    t = time.process_time()
    row = _old_plan(c)
    row["timestamps"] = json.dumps(c["times"])  # decode
    t = _lap(clock, "plan+decode", t)
    row = _arrow_hop({**row, **c["pixels"]})
    t = _lap(clock, "moves", t)
    row = _old_segment(row, c)
    t = _lap(clock, "segment", t)
    row = _arrow_hop(_arrow_hop(row))  # segment → flow → associate
    t = _lap(clock, "moves", t)
    tracked = _track(_old_track_chunk(row))
    out = _old_tracked_row(row, tracked)
    t = _lap(clock, "associate", t)
    out = _arrow_hop(out)
    t = _lap(clock, "moves", t)
    frames = _old_sink_frames(out)
    _lap(clock, "sink", t)
    return frames


# ---------------------------------------------------------------------------- after: typed columns
def _after(c: dict, clock: dict) -> list[tuple]:
    t = time.process_time()
    records = [g.to_json() for g in c["gt"].values()]  # as the plan task gets them today (not timed)
    t = time.process_time()
    row = {**SCALARS, "image_ids": strings(c["image_ids"]), **gt_columns(GtFrame.from_json(r) for r in records)}
    row.update(time_columns(c["times"]))  # decode
    t = _lap(clock, "plan+decode", t)
    row = _arrow_hop({**row, **c["pixels"]})
    t = _lap(clock, "moves", t)
    row["image_ids"].tolist()  # the host's image ids
    row.update(segment_columns(c["segments"]))
    t = _lap(clock, "segment", t)
    row = _arrow_hop(_arrow_hop(row))
    t = _lap(clock, "moves", t)
    tracked = _track(track_chunk(row))
    out = _tracked_row(row, tracked)
    t = _lap(clock, "associate", t)
    out = _arrow_hop(out)
    t = _lap(clock, "moves", t)
    frames = tracked_frames(out)
    _lap(clock, "sink", t)
    return frames


def _lap(clock: dict, part: str, since: float) -> float:
    now = time.process_time()
    clock[part] = clock.get(part, 0.0) + now - since
    return now


def _comparable(frames: list[tuple]) -> list[tuple]:
    return [(index, image_id, timestamp, error, segments, gt) for index, image_id, timestamp, error, _, segments, gt
            in frames]


@pytest.mark.parametrize("with_gt", [True, False], ids=["with GT", "without GT"])
def test_typed_chunk_columns_vs_json_strings(with_gt):
    chunks = [_chunk(seed, with_gt) for seed in range(CHUNKS)]
    before, after = _comparable(_before(chunks[0], {})), _comparable(_after(chunks[0], {}))
    assert before == after  # the sink gets the same frames, records and GT either way
    assert len(before) == FRAMES and sum(g is not None for *_, g in after) == len(chunks[0]["gt"])
    best = {}
    for _ in range(ROUNDS):
        for way, run in (("before", _before), ("after", _after)):
            clock = {}
            gc.collect()  # each round starts clean; collections the round's garbage causes count
            for c in chunks:
                run(c, clock)
            total = sum(clock.values())
            if way not in best or total < sum(best[way].values()):
                best[way] = clock
    per_chunk = {way: {part: 1e3 * s / CHUNKS for part, s in clock.items()} for way, clock in best.items()}
    total = {way: sum(parts.values()) for way, parts in per_chunk.items()}
    parts = ", ".join(f"{part} {per_chunk['before'][part]:.2f} → {per_chunk['after'][part]:.2f}"
                      for part in per_chunk["before"])
    print(f"\nchunk row columns, {FRAMES} frames x {SEGMENTS} segments at {WIDTH}x{HEIGHT}, {len(chunks[0]['gt'])} GT frames "
          f"(CPU ms per chunk, best of {ROUNDS} rounds of {CHUNKS} chunks): JSON {total['before']:.2f} ms, "
          f"typed {total['after']:.2f} ms: {total['before'] / total['after']:.1f}x less; {parts}")
