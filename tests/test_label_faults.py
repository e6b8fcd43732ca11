"""Where a video that lost a process resumes, what its staging keeps, and which failures are
retried (the Ray-free parts of pipelines/label/faults.py; tests/test_faults.py kills real
processes)."""
from __future__ import annotations

import numpy as np

import pytest

from operators.errors import InputError
from operators.formats import segments_table
from operators import fs
from pipelines.commit import OutputLayout
from pipelines.label.faults import VideoProgress, prepare_retry, resume_point
from pipelines.label.stages import lost_process


def progress(frames, parts) -> VideoProgress:
    return VideoProgress("cam/1", frame_count=16, frames=set(frames), parts=dict(parts))


def test_resume_at_the_last_checkpoint_before_the_first_missing_frame():
    p = progress(range(8), {"a": (0, 3), "b": (4, 7)})
    assert resume_point(p, [4, 8, 12]) == 8
    assert resume_point(p, [4, 12]) == 4            # no checkpoint at 8: the one before
    assert resume_point(p, []) == 0                 # none at all: start over
    gap = progress([0, 1, 2, 3, 8, 9, 10, 11], {"a": (0, 3), "c": (8, 11)})
    assert resume_point(gap, [4, 8, 12]) == 4       # frames 4..7 never came back


def test_a_boundary_inside_a_staged_part_is_not_a_resume_point():
    """A part written from one call that consumed chunks 0..7 cannot be cut at frame 4."""
    p = progress(range(8), {"a": (0, 7)})
    assert resume_point(p, [4]) == 0
    assert resume_point(p, [4, 8]) == 8


def test_prepare_retry_keeps_only_the_parts_before_the_resume_point(tmp_path):
    layout, run = OutputLayout(str(tmp_path)), "run1"
    staging = layout.staging(run, "cam/1")
    partition = segments_table.partition_dir(fs.join(staging, "segments"), "cam/1")
    names = ["part-00000000-00000003.parquet", "part-00000004-00000007.parquet",
             "part-00000008-00000011.parquet",   # written after the loss, never reported
             "part-00000002-00000005.parquet"]   # a late write of another grouping
    for name in names:
        fs.write_bytes(fs.join(partition, name), b"x")
    p = progress(range(8), {names[0]: (0, 3), names[1]: (4, 7)})
    assert prepare_retry(layout, run, p, [4, 8]) == 8
    filesystem, path = fs.fresh(partition)
    assert sorted(n.rsplit("/", 1)[-1] for n in filesystem.ls(path, detail=False)) == names[:2]
    assert p.resume_from == 8 and p.frames == set(range(8))
    p.frames.discard(5)                             # frame 5's row was lost after all
    assert prepare_retry(layout, run, p, [4, 8]) == 4
    assert sorted(n.rsplit("/", 1)[-1] for n in filesystem.ls(path, detail=False)) == names[:1]
    assert p.frames == {0, 1, 2, 3} and set(p.parts) == {names[0]}
    assert prepare_retry(layout, run, p, []) == 0   # no checkpoint: the whole staging goes
    assert not fs.exists(staging) and p.frames == set() and p.parts == {}


def test_a_summary_row_is_accounted_once_per_frame():
    p = VideoProgress("v")
    row = {"frame_count": 8, "frames": np.array([0, 1, 2, 3]), "part": "part-00000000-00000003.parquet",
           "frames_failed": 0, "frames_done": 4, "error": "", "stage": "", "lost": False}
    assert p.add(row) == 4 and not p.complete
    p.add(row)                                      # the same frames again (a retried write)
    assert len(p.frames) == 4 and not p.complete
    p.add({**row, "frames": np.array([4, 5, 6, 7]), "part": "part-00000004-00000007.parquet"})
    assert p.complete and p.parts == {"part-00000000-00000003.parquet": (0, 3), "part-00000004-00000007.parquet": (4, 7)}
    p.add({**row, "error": "ActorDiedError: gone", "stage": "associate", "lost": True})
    assert p.lost and p.error.startswith("ActorDiedError")
    p.lose("associate: ActorDiedError: gone", "associate")
    assert not p.lost and not p.error and p.lost_stage == "associate"
    assert "lost a worker in each of 1 passes" in p.lost_error()


def test_lost_processes_are_retried_and_bad_input_is_not():
    from ray.exceptions import ActorDiedError, OwnerDiedError, RayTaskError, WorkerCrashedError

    owner_died = OwnerDiedError("ab" * 14, None, "")
    assert lost_process(ActorDiedError()) and lost_process(WorkerCrashedError()) and lost_process(owner_died)
    assert lost_process(RayTaskError("push", "", owner_died).as_instanceof_cause())  # raised inside the actor
    bad = InputError("video v frames 0..3", "chunk arrived twice")
    assert not lost_process(RayTaskError("push", "", bad).as_instanceof_cause())
    assert not lost_process(bad) and not lost_process(ValueError("x"))


@pytest.mark.parametrize("resume_from, starts", [(0, [0, 4, 8]), (4, [4, 8]), (8, [8])])
def test_plan_skips_the_chunks_before_the_resume_point(tmp_path, resume_from, starts):
    from operators.synth import SynthConfig, write_corpus
    from pipelines.label.stages import plan_video

    write_corpus(str(tmp_path), SynthConfig(videos=1, frames=10, height=32, width=64, seed=0))
    rows = plan_video({"video_id": "0000", "uri": str(tmp_path / "videos" / "0000.mp4"), "gt": "",
                       "resume_from": resume_from}, chunk_frames=4, image_id_format="{video_id}_{frame_index}")
    assert [r["frame_start"] for r in rows] == starts
    assert all(r["resume_from"] == resume_from and r["frame_count"] == 10 and not r["error"] for r in rows)


GIVES_UP = "_gives_up"  # a window's first row carries it to the sub-driver that must give up


def _executor_gives_up(monkeypatch, call: int) -> list[list[dict]]:
    """The ``call``-th execution lets one row through and then raises, as Ray Data does when its
    actors keep dying as they start; the rows each execution got. The executions run in
    sub-drivers (graph.window_summaries, a Ray task each), so the fault is set up there, by a
    function Ray ships by value (what it calls there it names by its module: a patched module's
    functions would travel with the patches); the driver marks the window. The graph is never
    built in the driver."""
    from ray.exceptions import ActorDiedError

    import pipelines.label.graph as label_module

    real_windows, calls = label_module.execution_windows, []

    def windows(rows, size):
        for window in real_windows(rows, size):
            calls.append([dict(row) for row in window])
            if len(calls) == call:
                window[0] = {**window[0], GIVES_UP: True}
            yield window

    def in_the_driver(*args, **kwargs):
        raise AssertionError("the graph was built in the driver, not in a sub-driver")

    def summaries(rows, *args, **kwargs):  # runs in the sub-driver
        import pipelines.label.graph as sub

        class GivesUp:
            def __init__(self, dataset):
                self.dataset = dataset

            def iter_rows(self):
                rows = iter(self.dataset.iter_rows())
                yield next(rows)  # one row gets through, then the executor aborts
                raise ActorDiedError()

        if rows[0].pop(GIVES_UP, False):
            build = sub.build_dataset
            sub.build_dataset = lambda *a, **k: GivesUp(build(*a, **k))  # this process ends with the window
        yield from sub.window_summaries(rows, *args, **kwargs)  # this process's, not patched

    monkeypatch.setattr(label_module, "execution_windows", windows)
    monkeypatch.setattr(label_module, "build_dataset", in_the_driver)
    monkeypatch.setattr(label_module, "window_summaries", summaries)
    return calls


def test_a_pass_the_executor_gave_up_on_is_run_again(tmp_path, ray_local, monkeypatch):
    """Ray Data raising a system error mid-pass (its actors kept dying as they started) loses
    the pass's videos, not the run: the next pass labels them, with the clean rows."""
    from pipelines.label import label
    from pipelines.label.config import LabelConfig
    from test_label_pipeline import IMAGE_ID, make_corpus

    corpus = make_corpus(tmp_path / "corpus", videos=2, frames=6)
    config = LabelConfig(segmenter="precomputed", model=f"{corpus}/perframe", image_id_format=IMAGE_ID, chunk_frames=3)
    clean = label(f"{corpus}/videos", str(tmp_path / "clean"), config, progress=False, log=lambda *_: None)
    calls = _executor_gives_up(monkeypatch, 1)
    messages = []
    run = label(f"{corpus}/videos", str(tmp_path / "out"), config, progress=False, log=messages.append)
    assert [r.status for r in run.results] == ["ok", "ok"] and len(calls) == 2
    assert sorted(v for v, _ in run.resumed) == ["0000", "0001"] and "pass 2" in messages[-1]
    assert [row["resume_from"] for row in calls[1]] == [start for _, start in sorted(run.resumed)]
    columns = ["video_id", "frame_index", "track_id", "category_id", "area", "mask"]
    assert segments_table.read_segments_table(str(tmp_path / "out" / "segments")).select(columns).equals(
        segments_table.read_segments_table(str(tmp_path / "clean" / "segments")).select(columns))
    assert clean.resumed == []


@pytest.mark.slow  # five executions of the graph on Ray (~40 s on 2 busy cores); test_label_driver checks windows without Ray
def test_a_pass_in_windows_labels_each_video_once_also_when_a_window_is_lost(tmp_path, ray_local, monkeypatch):
    """A pass runs the graph once per window of videos (graph.execution_windows), the association
    actors serving every window. With windows of one video and the second window's executor giving
    up after one row, the pass stops there as a pass in one execution does: the first window's
    video is committed in pass 1, the second resumes in pass 2 and the third, which never ran,
    starts there; each video committed once, the outputs those of the sequential loop."""
    from dataclasses import replace

    from pipelines.commit import committed_markers
    from pipelines.label import label
    from operators.segmentation.precomputed import PrecomputedSegmenter
    from pipelines.label.config import LabelConfig
    from pipelines.sequential import label_sequentially
    from test_label_pipeline import IMAGE_ID, make_corpus

    corpus = make_corpus(tmp_path / "corpus", videos=3, frames=4, height=64, width=128)
    config = LabelConfig(segmenter="precomputed", model=f"{corpus}/perframe", image_id_format=IMAGE_ID, chunk_frames=2)
    calls = _executor_gives_up(monkeypatch, 2)
    windowed = replace(config, resources=replace(config.resources, window_videos=1))
    run = label(f"{corpus}/videos", str(tmp_path / "out"), windowed, progress=False, log=lambda *_: None)
    # pass 1: a window per video until the second's executor gave up; pass 2: the two videos left
    assert [[row["video_id"] for row in rows] for rows in calls] == [["0000"], ["0001"], ["0001"], ["0002"]]
    assert [(r.video_id, r.status) for r in run.results] == [("0000", "ok"), ("0001", "ok"), ("0002", "ok")]
    assert sorted(run.resumed) == [("0001", 2), ("0002", 0)]  # 0001 from its checkpoint, 0002 from the start
    assert sorted(committed_markers(OutputLayout(str(tmp_path / "out")))) == ["0000", "0001", "0002"]
    label_sequentially([(v, f"{corpus}/videos/{v}.mp4") for v in ("0000", "0001", "0002")],
                       PrecomputedSegmenter(f"{corpus}/perframe"),
                       image_id=lambda v, i: IMAGE_ID.format(video_id=v, frame_index=i),
                       segments_out=str(tmp_path / "sequential"))
    columns = ["video_id", "frame_index", "image_id", "track_id", "category_id", "area", "bbox", "mask"]
    order = [("video_id", "ascending"), ("frame_index", "ascending"), ("track_id", "ascending")]
    ours = segments_table.read_segments_table(str(tmp_path / "out" / "segments")).select(columns).sort_by(order)
    loop = segments_table.read_segments_table(str(tmp_path / "sequential")).select(columns).sort_by(order)
    assert ours.num_rows > 0 and ours.equals(loop)
