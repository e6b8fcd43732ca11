"""The chunk row's typed columns (pipelines/label/columns.py): segment records, GT records and
frame times go into numpy columns and come back equal, also through the Arrow blocks Ray Data
keeps them in between stages. No Ray."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from operators.formats.panoptic import SegmentInfo
from operators.formats.vps_layout import VpsImage
from pipelines.label import columns
from pipelines.label.columns import (GtFrame, gt_columns, gt_of, segment_columns, segments_of, strings, time_columns,
                                     times_of)
from pipelines.label.stages import batch_of, rows_of

FRAMES = [[SegmentInfo(1000, 0, 1_048_576, (0, 0, 2048, 512)),
           SegmentInfo(26001, 13, 4321, (1900, 1000, 148, 24), iscrowd=1, score=0.8734512345678912)],
          [],  # a frame without segments
          [SegmentInfo(7, 11, 1, (5, 6, 1, 1), score=-0.0), SegmentInfo(8, 11, 1, (6, 6, 1, 1), score=1e-300)],
          []]  # the last frame without segments too
GT = [GtFrame(VpsImage(17, "0000_0005_city_leftImg8bit.png", 2048, 1024, "0000", 5), "/gt/panoptic/a.png",
              FRAMES[0]),
      GtFrame(VpsImage("0000_0010_x", "b.png", 0, 0, "clip-a", 10), "s3://bucket/gt/b.png", [])]


def _through_arrow(row: dict) -> dict:
    """One row through what Ray Data does between two stages: a numpy batch → an Arrow block →
    pickled and back (the object store) → a numpy batch."""
    from ray.data.block import BlockAccessor

    block = pickle.loads(pickle.dumps(BlockAccessor.batch_to_block(batch_of([row])), protocol=5))
    (out,) = rows_of(BlockAccessor.for_block(block).to_batch_format("numpy"))
    return out


def test_segment_records_come_back_equal_per_frame():
    cols = segment_columns(FRAMES)
    assert cols["segments"].shape == (4, len(columns.SEGMENT_FIELDS)) and cols["segments"].dtype == np.int64
    assert cols["segments"][:, 0].tolist() == [0, 0, 2, 2]  # each record's frame
    back = segments_of(cols, len(FRAMES))
    assert back == FRAMES
    assert [s.score for s in back[0]] == [None, 0.8734512345678912]  # exact, and None stays None
    assert str(back[2][0].score) == "-0.0" and back[2][1].score == 1e-300  # a zero is a score, its sign kept
    assert all(type(v) is int for s in back[0] for v in (s.id, s.area, *s.bbox))  # as JSON gave them
    assert segments_of(segment_columns([]), 0) == [] and segments_of(segment_columns([[], []]), 2) == [[], []]


def test_gt_records_come_back_equal_with_the_type_of_their_image_id():
    back = gt_of(gt_columns(GT))
    assert back == {5: GT[0], 10: GT[1]}
    assert type(back[5].image.id) is int and type(back[10].image.id) is str
    assert gt_of(gt_columns([])) == {}


def test_frame_times_keep_the_frames_without_a_time():
    assert times_of(time_columns([1_700_000_000_123_456_789, None, 0])) == [1_700_000_000_123_456_789, None, 0]


@pytest.mark.parametrize("frames, gt", [(FRAMES, GT), ([[], []], []), ([], [])])
def test_a_row_survives_ray_datas_arrow_blocks(frames, gt):
    row = {"video_id": "0000", "error": "", "image_ids": strings(f"0000_{i:04d}" for i in range(len(frames))),
           **time_columns([None] * len(frames)), **segment_columns(frames), **gt_columns(gt)}
    out = _through_arrow(row)
    assert segments_of(out, len(frames)) == frames and gt_of(out) == {g.image.frame_index: g for g in gt}
    assert out["image_ids"].tolist() == row["image_ids"].tolist() and times_of(out) == [None] * len(frames)


def test_blank_gives_a_failed_row_every_column_of_its_stage_empty():
    row = {}
    columns.blank(columns.PLAN, columns.DECODE, columns.SEGMENT, columns.FLOW)(row)
    assert all(value.shape[0] == 0 for value in row.values())
    assert segments_of(row, 0) == [] and gt_of(row) == {} and times_of(row) == []
    tracked = {}
    columns.blank(columns.TRACKED)(tracked)
    assert set(columns.TRACKED) <= set(tracked) and _through_arrow(tracked)["frame_indices"].shape == (0,)
