"""The one skeleton of the labelling graph's stages (pipelines/label/stages.py: ``stage``): errors
become failure rows of the stage that raised, rows that failed upstream skip the work and keep
the schema, and every row gets its stage's operator time. No Ray."""
from __future__ import annotations

import numpy as np

from pipelines.label.stages import FlowChunks, batch_of, decode_chunk, map_rows, stage


def _row(**extra) -> dict:
    return {"video_id": "v", "uri": "/nowhere.mp4", "frame_start": 0, "frame_end": 2, "chunk_index": 0,
            "frame_count": 2, "error": "", "stage": "", **extra}


def test_a_stage_times_its_work_and_turns_an_exception_into_its_failure_row():
    calls = []

    def blank(row):
        row["out"] = np.zeros(0)

    @stage("segment", blank=blank)
    def work(row):
        calls.append(row["video_id"])
        if row["frame_start"]:
            raise ValueError("bad frame")
        sum(range(20000))  # some CPU time to measure
        row["out"] = np.ones(2)
        return row

    ok, bad, upstream = work(_row()), work(_row(frame_start=1)), work(_row(error="decode: broken", stage="decode"))
    assert ok["out"].tolist() == [1.0, 1.0] and not ok["error"] and ok["t_segment"] > 0
    assert bad["error"].startswith("ValueError: bad frame (at test_label_stages.py:") and bad["stage"] == "segment"
    assert bad["out"].shape == (0,) and "t_segment" in bad  # the blank columns: the schema of the others
    assert upstream["error"] == "decode: broken" and upstream["stage"] == "decode" and upstream["out"].shape == (0,)
    assert calls == ["v", "v"]  # the work never ran for the row that failed upstream
    assert set(ok) == set(bad) == set(upstream)


def test_a_stage_can_make_its_own_rows_for_failures_and_can_run_on_failed_rows():
    @stage("associate", passed=lambda row: {"kind": "passed"}, failed=lambda row, exc: {"kind": f"failed: {exc}"})
    def strict(row):
        raise RuntimeError("lost")

    assert strict(_row(error="x", stage="flow"))["kind"] == "passed"
    assert strict(_row())["kind"] == "failed: lost" and "t_associate" in strict(_row())

    @stage("sink", skip_failed=False)
    def sink(row, *, suffix):
        row["written"] = row["video_id"] + suffix
        return row

    assert sink(_row(error="frame 3: wrong size", stage="associate"), suffix="!")["written"] == "v!"


def test_the_input_row_is_not_changed():
    row = _row()
    decode_chunk(row)  # fails: the file is not there
    assert row == _row()


def test_decode_fails_a_missing_file_with_empty_frames_and_its_time():
    out = decode_chunk(_row())
    assert out["stage"] == "decode" and "/nowhere.mp4" in out["error"]
    assert out["rgb"].shape[0] == 0 and out["prev_rgb"].shape[0] == 0 and out["frame_times"].shape == (0, 2)
    assert out["t_decode"] >= 0


def test_flow_over_a_batch_drops_the_boundary_frame_and_keeps_failed_rows():
    flow = FlowChunks.__new__(FlowChunks)  # without its estimator's set-up (no Ray in this process)
    flow.estimate = lambda current, previous: np.full((*current.shape[:2], 2), 0.5, np.float32)
    rgb = np.zeros((2, 4, 6, 3), np.uint8)
    rows = [_row(rgb=rgb, prev_rgb=rgb[:1]), _row(rgb=rgb, prev_rgb=rgb[:0], error="decode: gone", stage="decode")]
    out = flow(batch_of(rows))
    assert "prev_rgb" not in out and out["error"].tolist() == ["", "decode: gone"]
    assert out["flow"][0].shape == (2, 4, 6, 2) and float(out["flow"][0].min()) == 0.5
    assert out["flow"][1].shape[0] == 0 and len(out["t_flow"]) == 2
    assert map_rows(batch_of(rows[:1]), lambda r: {**r, "n": 1}, drop=("rgb",))["n"].tolist() == [1]
