"""The labelling driver's bookkeeping without Ray (pipelines/label/passes.py, driver.py): what
becomes of each video from the sink's summary rows, the bounded window of finalize tasks and
its O(1) collection per row, the skip selection, the early-chunk bound of the association, the
parallel reads of fingerprints and markers, and pred.json written as a stream."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from operators import fs
from operators.association import TrackChunk, TrackerConfig, TrackerFrame, VideoOperator
from operators.errors import InputError
from operators.formats.panoptic import PanopticFrame
from pipelines.commit import CommitMarker, OutputLayout, committed_markers
from pipelines.label.stages import early_chunk_bound
from pipelines.label.driver import split_skipped
from pipelines.label.faults import VideoProgress
from pipelines.label.finalize import VideoResult, annotations_rel
from pipelines.label.graph import (VIDEOS_PER_BLOCK, execution_window_size, execution_windows, finalize_window_size,
                                   input_blocks)
from pipelines.label.outputs import write_predictions_json
from pipelines.label.passes import FinalizeWindow, PassBook, RunTally
from pipelines.label.stages import TIMED
from pipelines.plan import MISSING, fingerprints


def _summary(video_id: str, frames: list[int], frame_count: int, error: str = "", stage: str = "",
             lost: bool = False) -> dict:
    return {"video_id": video_id, "frame_count": frame_count, "frames_done": len(frames),
            "frames_failed": 0 if not error else frame_count - len(frames), "error": error,
            "stage": stage, "lost": lost, "frames": np.array(frames, np.int64),
            "part": "part-0.parquet" if frames else "", **{f"t_{s}": 0.5 for s in TIMED}}


def test_the_pass_book_closes_each_video_once_and_counts_failures_as_they_come():
    tally, launched, discarded, finished, done = RunTally(0.0, clock=lambda: 2.0), [], [], [], []
    book = PassBook({v: VideoProgress(v) for v in ("a", "b", "c", "d")}, tally, launched.append, discarded.append,
                    finished.append, lambda: done.append(1))
    book.take(_summary("a", [0, 1], 4))
    assert not launched and tally.frames == 2
    book.take(_summary("a", [2, 3], 4))  # a's last frames: its finalize starts
    book.take(_summary("b", [], 3, error="broken.mp4: cannot decode", stage="decode"))  # bad input: failed, not retried
    book.take(_summary("c", [], 3, error="ActorDiedError", stage="associate",
                          lost=True))  # a lost process: next pass
    book.take(_summary("a", [3], 4))  # a late row of a closed video counts its time, nothing else
    assert [p.video_id for p in launched] == ["a"] and discarded == ["b"] and sorted(finished) == ["a", "b", "c"]
    assert list(book.lost) == ["c"] and book.lost["c"].losses == ["associate: ActorDiedError"]
    assert tally.failed == 1 and [r.status for r in tally.results] == ["failed"] and len(done) == 1
    assert tally.stage_cpu_seconds["segment"] == 2.5 and tally.first_output == 2.0
    book.close_unfinished()  # d never came back
    assert sorted(book.lost) == ["c", "d"] and "only 0 of 0 frames came back" in book.lost["d"].losses[0]
    book.finalized(launched[0], VideoResult("a", "ok", 4))
    book.finalized(VideoProgress("e"), None)  # a finalize that lost its worker: the video runs again
    assert tally.failed == 1 and len(tally.results) == 2 and sorted(book.lost) == ["c", "d", "e"]
    assert tally.failed == sum(r.status == "failed" for r in tally.results)


class _Ref:
    def __init__(self, ends: int):
        self.ends = ends


class _Clock:
    """``ray.wait``'s contract over refs that end at a row count; counts the refs it looked at."""

    def __init__(self):
        self.now, self.looked = 0, 0

    def wait(self, refs, num_returns=1, timeout=None):
        self.looked += len(refs)
        if timeout is None:  # blocking: time passes until enough have ended
            self.now = max(self.now, sorted(r.ends for r in refs)[num_returns - 1])
        done = [r for r in refs if r.ends <= self.now][:num_returns]
        return done, [r for r in refs if r not in done]


@pytest.mark.parametrize("latency", [1, 40, 400])
def test_the_finalize_window_is_bounded_and_looks_at_o1_tasks_per_row(latency):
    clock, window, back, most = _Clock(), FinalizeWindow(16, None), [], 0
    window.wait = clock.wait
    rows = 5000
    for row in range(rows):
        clock.now = max(clock.now, row)
        back += window.add(_Ref(clock.now + latency), row)
        back += window.poll()
        most = max(most, len(window))
    while len(window):
        clock.now += 1
        back += window.drain()
    assert sorted(item for _, item in back) == list(range(rows))  # every task comes back exactly once
    assert most <= 16
    # at most two looks over the (bounded) window per row, whatever the finalize latency: the loop
    # before looked at every pending task after every row (latency × rows)
    assert clock.looked <= 2 * 16 * rows


def test_a_pass_puts_several_videos_in_a_block_and_enough_blocks_for_every_decode_slot():
    assert input_blocks(100_000, 8) == 1563 and 100_000 / 1563 <= VIDEOS_PER_BLOCK  # not one block per video
    assert input_blocks(100, 8) == 32 and input_blocks(100, 1) == 4  # four blocks per plan+decode slot
    assert input_blocks(3, 8) == 3 and input_blocks(0, 8) == 1  # never more blocks than videos, never none
    assert input_blocks(100, 8, isolate=True) == 100  # a later pass: one video per block


def test_the_window_size_follows_the_cluster_within_bounds():
    assert finalize_window_size(2) == 16 and finalize_window_size(64) == 256 and finalize_window_size(10_000) == 1024
    with pytest.raises(ValueError):
        FinalizeWindow(0, None)


def test_a_pass_runs_in_windows_that_take_each_video_once_in_order_and_only_when_needed():
    taken = []

    def rows():
        for v in range(7):
            taken.append(v)
            yield {"video_id": f"v{v}"}

    windows = execution_windows(rows(), 3)
    first = next(windows)
    assert [r["video_id"] for r in first] == ["v0", "v1", "v2"] and taken == [0, 1, 2]  # the next window not yet
    rest = list(windows)
    assert [[r["video_id"] for r in w] for w in rest] == [["v3", "v4", "v5"], ["v6"]] and taken == list(range(7))
    assert [len(w) for w in execution_windows(rows(), 0)] == [7]  # 0: the pass in one execution
    assert list(execution_windows([], 3)) == []
    with pytest.raises(ValueError):
        list(execution_windows(rows(), -1))
    # the window follows the cluster: 256 videos on 2 CPUs, 2,048 at most
    assert execution_window_size(2) == 256 and execution_window_size(8) == 512 and execution_window_size(1e4) == 2048


def test_the_ray_engine_runs_one_sub_driver_per_window_and_each_video_once(monkeypatch):
    """RayEngine.summaries without Ray: a sub-driver (graph.window_summaries, here called in this
    process in place of the Ray task) per window, from the rows of that window only, its lists of
    rows read out in turn; the graph is never built in the driver (the pass on Ray, with a lost
    window and a killed sub-driver: test_label_faults.py, test_faults.py)."""
    import pipelines.label.graph as graph
    from pipelines.label.passes import RayEngine

    built, made, started = [], [], []

    class Execution:
        def __init__(self, rows):
            self.rows = rows

        def iter_rows(self):
            for row in self.rows:
                yield {"video_id": row["video_id"], "window": len(built)}

    def build_dataset(rows, *args, **kwargs):
        built.append([row["video_id"] for row in rows])
        return Execution(rows)

    class WindowTask:  # the Ray task, run here: its "refs" are the lists it yields
        @staticmethod
        def remote(rows, *args, context):
            started.append(args[-1])  # the window's input blocks, decided by the driver
            return graph.window_summaries(rows, *args, context=context)

    def rows():
        for v in range(5):
            made.append(v)
            yield {"video_id": f"v{v}"}

    monkeypatch.setattr(graph, "build_dataset", build_dataset)
    engine = object.__new__(RayEngine)  # its __init__ starts the association actors
    engine.pool, engine.window_task, engine.get, engine.in_driver, engine.running = None, WindowTask, list, False, None
    engine.passes = type("Passes", (), {"plan": {"window_videos": 2, "task_concurrency": 8}, "config": None,
                                        "layout": OutputLayout("o"), "run_id": "r", "categories": None,
                                        "gt": type("G", (), {"settings": None}), "attempt": 1})()
    summaries = engine.summaries(rows())
    assert next(summaries) == {"video_id": "v0", "window": 1} and made == [0, 1]  # one window's rows at a time
    assert list(summaries) == [{"video_id": "v1", "window": 1}, {"video_id": "v2", "window": 2},
                               {"video_id": "v3", "window": 2}, {"video_id": "v4", "window": 3}]
    assert built == [["v0", "v1"], ["v2", "v3"], ["v4"]] and started == [2, 2, 1]  # a later pass: a block per video


def test_a_sub_driver_sends_its_rows_in_lists_and_no_row_waits_for_the_next():
    """graph.in_lists (what a sub-driver yields): lists of at most ``size`` rows, every row once and
    in order; a list goes when its first row is due even while no next row comes; rows delivered
    before the execution raised go first, then the error."""
    from pipelines.label.graph import in_lists

    lists = list(in_lists(({"i": i} for i in range(150)), 64, 3600.0))
    assert [len(rows) for rows in lists] == [64, 64, 22]
    assert [row["i"] for rows in lists for row in rows] == list(range(150))

    released = threading.Event()

    def stalls():
        yield {"i": 0}
        assert released.wait(60), "the first row waited for the next one"
        yield {"i": 1}

    stalled = in_lists(stalls(), 64, 0.01)
    assert next(stalled) == [{"i": 0}]  # sent while the next row is not there
    released.set()
    assert list(stalled) == [[{"i": 1}]]

    def gives_up():
        yield from ({"i": i} for i in range(3))
        raise RuntimeError("executor gave up")

    failing = in_lists(gives_up(), 64, 3600.0)
    assert next(failing) == [{"i": 0}, {"i": 1}, {"i": 2}]
    with pytest.raises(RuntimeError, match="gave up"):
        next(failing)


def test_window_videos_is_checked_and_reaches_the_config():
    import argparse

    from jobs.label import add_arguments, config_from_args
    from pipelines.label.config import StageResources

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError):
        StageResources(window_videos=-1)
    assert StageResources().window_videos is None  # chosen from the cluster (graph.stage_plan)
    args = parser.parse_args(["--input", "in", "--output", "out", "--window-videos", "0"])
    assert config_from_args(args).resources.window_videos == 0
    with pytest.raises(InputError, match="window_videos"):
        config_from_args(parser.parse_args(["--input", "i", "--output", "o", "--window-videos", "-2"]))


class _Entry:
    def __init__(self, video_id: str, digest: str):
        self.video_id, self.fingerprint = video_id, self
        self.digest = digest


def test_split_skipped_keeps_what_changed_and_skips_what_is_current():
    marker = CommitMarker("a", "d1", "cfg", {}, {"frames": 7}, [], "run")
    entries = [_Entry("a", "d1"), _Entry("b", "d2"), _Entry("a2", "d1")]
    todo, skipped = split_skipped(entries, {"a": marker, "b": CommitMarker("b", "old", "cfg", {}, {}, [], "r")}, "cfg")
    assert [e.video_id for e in todo] == ["b", "a2"] and [(r.video_id, r.frames) for r in skipped] == [("a", 7)]
    assert len(split_skipped(entries, {"a": marker}, "other config")[0]) == 3
    assert len(split_skipped(entries, {"a": marker}, "cfg", force=True)[0]) == 3


def _chunk(video_id: str, start: int, stop: int) -> TrackChunk:
    ids = np.zeros((4, 4), np.int32)
    return TrackChunk(video_id, start, stop, [TrackerFrame(i, PanopticFrame(ids, []), np.zeros((4, 4, 3), np.uint8),
                                                           None, None, f"{video_id}_{i}") for i in range(start, stop)])


@pytest.mark.parametrize("frames, resume_from, chunk_frames, bound", [(100, 0, 32, 3), (96, 0, 32, 2), (1, 0, 32, 0),
                                                                       (100, 64, 32, 1), (100, 96, 32, 0)])
def test_the_early_chunk_bound_is_all_chunks_of_the_pass_but_one(frames, resume_from, chunk_frames, bound):
    assert early_chunk_bound(frames, resume_from, chunk_frames) == bound
    starts = list(range(resume_from, frames, chunk_frames))
    op = VideoOperator("v", TrackerConfig(), first_frame=resume_from, max_buffered_chunks=bound)
    out = []
    for start in reversed(starts):  # the worst order: every chunk but the first arrives early
        out += op.push(start, min(start + chunk_frames, frames), _chunk("v", start, min(start + chunk_frames, frames)))
    assert [f.frame_index for f in out] == list(range(resume_from, frames))


def test_a_chunk_beyond_the_bound_fails_the_video_instead_of_buffering():
    op = VideoOperator("v", TrackerConfig(), max_buffered_chunks=early_chunk_bound(64, 0, 32))
    op.push(32, 64, _chunk("v", 32, 64))
    with pytest.raises(InputError, match="early chunks are already held"):
        op.push(64, 96, _chunk("v", 64, 96))  # a chunk the plan does not have


def test_map_io_keeps_order_and_a_bounded_number_in_flight():
    taken, in_flight, most, lock = [0], [0], [0], threading.Lock()

    def items():
        for i in range(200):
            taken[0] += 1
            yield i

    def slow_square(i):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        with lock:
            in_flight[0] -= 1
        return i * i

    results = fs.map_io(slow_square, items(), workers=4)
    first = next(results)
    assert first == 0 and taken[0] <= 2 * 4  # not every item submitted before the first result
    assert [first, *results] == [i * i for i in range(200)] and most[0] <= 4


def test_fingerprints_read_each_file_once_in_order(tmp_path, monkeypatch):
    import pipelines.plan as plan

    (tmp_path / "a.mp4").write_bytes(b"a")
    (tmp_path / "log.mcap").write_bytes(b"log")
    seen = []
    real = plan.fingerprint
    monkeypatch.setattr(plan, "fingerprint", lambda uri: seen.append(uri) or real(uri))
    uris = [f"{tmp_path}/log.mcap#/cam/front", str(tmp_path / "a.mp4"), f"{tmp_path}/log.mcap#/cam/rear"]
    prints = fingerprints(uris)
    assert sorted(seen) == sorted([str(tmp_path / "a.mp4"), f"{tmp_path}/log.mcap"])  # the log once for its topics
    assert prints[0] == prints[2] != prints[1] and prints[1].size == 1
    assert fingerprints([str(tmp_path / "gone.mp4")], missing_ok=True) == [MISSING]
    with pytest.raises(InputError, match="not found"):
        fingerprints([str(tmp_path / "gone.mp4")])


def _committed_video(layout: OutputLayout, video_id: str, frames: int) -> CommitMarker:
    images = [{"id": f"{video_id}_{i}", "file_name": f"{video_id}_{i}.png", "width": 4, "height": 2,
               "video_id": video_id, "frame_index": i, "timestamp_ns": None} for i in range(frames)]
    annotations = [{"image_id": f"{video_id}_{i}", "file_name": f"{video_id}_{i}.png",
                    "segments_info": [{"id": 1000 + i, "category_id": 0, "area": 8, "bbox": [0, 0, 4, 2],
                                       "iscrowd": 0}]} for i in range(frames)]
    fs.write_bytes(layout.uri(annotations_rel(video_id)), json.dumps({"images": images,
                                                                      "annotations": annotations}).encode())
    return CommitMarker(video_id, "d", "c", {}, {"frames": frames}, [annotations_rel(video_id)], "r")


def test_pred_json_written_as_a_stream_is_the_document_of_every_committed_video(tmp_path):
    layout = OutputLayout(str(tmp_path))
    markers = {v: _committed_video(layout, v, n) for v, n in (("a", 2), ("b\u00e9\"/x", 3), ("c", 0))}
    markers["d"] = CommitMarker("d", "d", "c", {}, {"frames": 1}, [], "r")  # committed without annotations
    assert write_predictions_json(layout, markers) == 5
    doc = json.loads(fs.read_bytes(layout.uri("pred.json")))
    expected = [json.loads(fs.read_bytes(layout.uri(annotations_rel(v)))) for v in ("a", "b\u00e9\"/x", "c")]
    assert doc == {"images": [i for e in expected for i in e["images"]],
                   "annotations": [a for e in expected for a in e["annotations"]]}
    assert write_predictions_json(layout, {}) == 0
    assert json.loads(fs.read_bytes(layout.uri("pred.json"))) == {"images": [], "annotations": []}


def test_committed_markers_are_read_in_parallel_and_come_back_sorted(tmp_path):
    from pipelines.commit import commit_video

    layout = OutputLayout(str(tmp_path))
    for video_id in ("z", "a/b", "m"):
        staging = layout.staging("run", video_id)
        fs.write_bytes(fs.join(staging, annotations_rel(video_id)), b"{}")
        commit_video(layout, video_id, staging, CommitMarker(video_id, "d", "c", {}, {}, [], "run"))
    markers = committed_markers(layout)
    assert list(markers) == ["a/b", "m", "z"] and all(m.video_id == v for v, m in markers.items())
