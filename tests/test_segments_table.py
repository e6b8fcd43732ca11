"""The Parquet segments table: schema, lossless PNG → Parquet → PNG, hive layout, remote URIs."""
from __future__ import annotations

import os
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from operators.errors import CorruptFileError, FormatMismatchError
from operators.formats.categories import categories_by_id
from operators.formats.panoptic import PanopticFrame, SegmentInfo, read_panoptic_png, segments_from_ids, \
    write_panoptic_png
from operators.formats.segments_table import (FILE_SCHEMA, SEGMENTS_SCHEMA, frame_to_batch, frame_to_rows,
                                              iter_table_frames, read_segments_table, rows_to_frame,
                                              table_to_rows, write_segments_table)

H, W = 40, 64
CATEGORY = categories_by_id()


def busy_frame(seed: int, segments: int = 60) -> PanopticFrame:
    """Stuff bands, ``segments`` thing blobs of random shapes (ids up to ≥ 65536, holes and
    split parts included), a crowd segment and VOID pixels."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((H, W), np.int32)
    ids[: H // 3] = 11_000  # sky
    ids[H // 3:] = 1_000  # road
    ids[H // 3: H // 2, : W // 2] = 9_000  # building
    category = {11_000: 10, 1_000: 0, 9_000: 2}
    for k in range(1, segments + 1):
        seg_id = 14_000 + k if k % 3 else 65_536 * (k % 7 + 1) + 14_000 + k  # some ids use the B channel
        y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
        blob = rng.random((rng.integers(1, 5), rng.integers(1, 5))) < 0.7
        region = ids[y:y + blob.shape[0], x:x + blob.shape[1]]
        region[blob] = seg_id
        category[seg_id] = 13
    ids[H - 5:, W - 9:] = 12_000  # a crowd of persons
    category[12_000] = 11
    ids[rng.random((H, W)) < 0.05] = 0  # scattered VOID
    ids[:, :2] = 0  # a VOID border
    present = set(np.unique(ids).tolist())
    scores = {i: float(np.float32(rng.random())) for i in present if i}
    return PanopticFrame(ids, segments_from_ids(ids, {i: c for i, c in category.items() if i in present},
                                                iscrowd_of={12_000: 1}, score_of=scores))


def test_schema_is_explicit_and_documented():
    assert SEGMENTS_SCHEMA.names == ["video_id", "frame_index", "timestamp_ns", "image_id", "track_id", "category_id",
                                     "isthing", "iscrowd", "area", "bbox", "score", "mask", "source_uri", "topic"]
    assert SEGMENTS_SCHEMA.field("track_id").type == pa.int64()
    assert SEGMENTS_SCHEMA.field("frame_index").type == pa.int32()
    assert SEGMENTS_SCHEMA.field("score").nullable and not SEGMENTS_SCHEMA.field("area").nullable
    mask = SEGMENTS_SCHEMA.field("mask").type
    assert [(f.name, f.type) for f in mask] == [("size", pa.list_(pa.int32())), ("counts", pa.binary())]
    assert all(f.metadata and f.metadata[b"doc"] for f in SEGMENTS_SCHEMA)
    assert "video_id" in FILE_SCHEMA.names  # the files carry the id, not only the directory name
    assert SEGMENTS_SCHEMA.field("timestamp_ns").nullable and SEGMENTS_SCHEMA.field("topic").nullable


def test_rows_hold_the_segments_pixels():
    """Every row against an independent computation from the id map."""
    frame = busy_frame(0)
    rows = frame_to_rows(frame, "0007", 3, "0007_0003_x")
    assert [r.track_id for r in rows] == [s.id for s in frame.segments]
    for row in rows:
        pixels = frame.ids == row.track_id
        np.testing.assert_array_equal(mask_utils.decode(row.mask).astype(bool), pixels)
        ys, xs = np.nonzero(pixels)
        assert row.area == pixels.sum()
        assert row.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert row.isthing == CATEGORY[row.category_id].isthing
        assert row.iscrowd == (row.track_id == 12_000)
        assert (row.video_id, row.frame_index, row.image_id) == ("0007", 3, "0007_0003_x")


def test_png_to_parquet_to_png_is_lossless(tmp_path):
    """Real PNGs written by write_panoptic_png, through the table on disk and back to PNG."""
    expected = {}
    batches = []
    for video, frames in (("0000", range(0, 5)), ("0001", range(10, 13))):
        for t in frames:
            frame = busy_frame(seed=100 * int(video) + t)
            png = str(tmp_path / "in" / f"{video}_{t:04d}.png")
            write_panoptic_png(png, frame.ids)
            read_back = PanopticFrame(read_panoptic_png(png), frame.segments)
            batches.append(frame_to_batch(read_back, video, t, f"{video}_{t:04d}_synth"))
            expected[(video, t)] = frame
    root = str(tmp_path / "segments")
    written = write_segments_table(root, batches)
    assert sorted(os.path.relpath(p, root) for p in written) == [
        "video_key=0000/part-00000000-00000004.parquet", "video_key=0001/part-00000010-00000012.parquet"]

    table = read_segments_table(root)
    assert table.schema.equals(SEGMENTS_SCHEMA, check_metadata=False)
    assert table.num_rows == sum(len(f.segments) for f in expected.values())
    seen = []
    for item in iter_table_frames(table):
        original = expected[(item.video_id, item.frame_index)]
        out_png = str(tmp_path / "out" / f"{item.image_id}.png")
        write_panoptic_png(out_png, item.frame.ids)
        np.testing.assert_array_equal(read_panoptic_png(out_png), original.ids)
        assert item.frame.segments == original.segments  # ids, categories, area, bbox, iscrowd, score
        seen.append((item.video_id, item.frame_index))
    assert seen == sorted(expected)


def test_many_segments_round_trip():
    frame = busy_frame(seed=5, segments=400)
    assert len(frame.segments) > 150
    rebuilt = rows_to_frame(frame_to_rows(frame, "v", 0, "v_0"))
    np.testing.assert_array_equal(rebuilt.ids, frame.ids)
    assert rebuilt.segments == frame.segments


def test_all_void_frame_needs_its_size():
    empty = PanopticFrame(np.zeros((H, W), np.int32), [])
    assert frame_to_rows(empty, "v", 0, "v_0") == []
    np.testing.assert_array_equal(rows_to_frame([], size=(H, W)).ids, empty.ids)
    with pytest.raises(ValueError):
        rows_to_frame([])


def test_rewriting_a_chunk_replaces_it_and_video_filter_prunes(tmp_path):
    root = str(tmp_path / "t")
    batch = frame_to_batch(busy_frame(1), "a/b c", 4, "img")  # an id that needs percent-encoding
    write_segments_table(root, batch)
    write_segments_table(root, batch)  # a retried chunk
    other = frame_to_batch(busy_frame(2), "other", 0, "img2")
    write_segments_table(root, [pa.Table.from_batches([other]), frame_to_batch(busy_frame(3), "other", 1, "i3")])
    assert write_segments_table(root, []) == []
    assert sorted(os.listdir(root)) == ["video_key=a%2Fb%20c", "video_key=other"]
    table = read_segments_table(root, video_ids=["a/b c"])
    assert table.num_rows == batch.num_rows
    assert set(table["video_id"].to_pylist()) == {"a/b c"}
    # the files themselves are plain Parquet holding the video_id column
    assert read_segments_table(root, video_ids=["other"])["frame_index"].to_pylist() == \
        [0] * other.num_rows + [1] * len(busy_frame(3).segments)
    part = pq.read_table(os.path.join(root, "video_key=other", "part-00000000-00000001.parquet"))
    assert part.schema.names == FILE_SCHEMA.names and set(part["video_id"].to_pylist()) == {"other"}
    assert pq.read_schema(os.path.join(root, "video_key=other", "part-00000000-00000001.parquet")) \
        .field("track_id").metadata[b"doc"].startswith(b"panoptic segment id")


def test_pandas_reading_and_mask_decoding(tmp_path):
    """What the README shows: to pandas, decode a mask with pycocotools; video ids stay text."""
    pytest.importorskip("pandas")
    root = str(tmp_path / "segments")
    frame = busy_frame(3)
    write_segments_table(root, frame_to_batch(frame, "0000", 0, "img"))
    df = read_segments_table(root).to_pandas()
    assert set(df.video_id) == {"0000"}
    i = df.index[df.category_id == 13][0]
    mask = mask_utils.decode({"size": list(df.loc[i, "mask"]["size"]), "counts": df.loc[i, "mask"]["counts"]})
    np.testing.assert_array_equal(mask.astype(bool), frame.ids == df.loc[i, "track_id"])


def test_frames_with_bad_segments_are_rejected():
    frame = busy_frame(4)
    unknown = PanopticFrame(frame.ids, [SegmentInfo(s.id, 99 if i == 0 else s.category_id, s.area, s.bbox)
                                        for i, s in enumerate(frame.segments)])
    with pytest.raises(FormatMismatchError, match=r"video v frame 2: unknown category ids \[99\]"):
        frame_to_rows(unknown, "v", 2, "img")
    with pytest.raises(FormatMismatchError, match="in the PNG but not in segments_info"):
        frame_to_rows(PanopticFrame(frame.ids, frame.segments[1:]), "v", 2, "img")


def test_rows_that_do_not_make_one_frame_are_rejected():
    rows = frame_to_rows(busy_frame(6), "v", 1, "img")
    overlapping = list(rows)
    overlapping[1] = type(rows[1])(**{**rows[1].__dict__, "track_id": 5, "mask": rows[0].mask})
    with pytest.raises(FormatMismatchError, match="video v frame 1: the mask of track 5 overlaps"):
        rows_to_frame(overlapping)
    other_frame = frame_to_rows(busy_frame(6), "v", 2, "img")
    with pytest.raises(FormatMismatchError, match="more than one frame"):
        rows_to_frame(rows + other_frame)
    with pytest.raises(FormatMismatchError, match="expected"):
        rows_to_frame(rows, size=(H + 1, W))


def test_damaged_masks_and_files_are_rejected(tmp_path):
    rows = frame_to_rows(busy_frame(9), "v", 1, "img")
    row = rows[3]
    for counts in (b"", b"\xff\xfe", row.mask["counts"][:-1], b"garbage!"):  # pycocotools alone decodes some of these
        damaged = [type(row)(**{**row.__dict__, "mask": {"size": row.mask["size"], "counts": counts}})]
        with pytest.raises(CorruptFileError, match=f"video v frame 1 track {row.track_id}: .*COCO RLE"):
            rows_to_frame(damaged)
    wrong_area = [type(row)(**{**row.__dict__, "area": row.area + 1})]
    with pytest.raises(FormatMismatchError, match=rf"track {row.track_id}: area {row.area + 1} and bbox .* but"):
        rows_to_frame(wrong_area)
    wrong_bbox = [type(row)(**{**row.__dict__, "bbox": (0, 0, 1, 1)})]
    with pytest.raises(FormatMismatchError, match=rf"bbox \[0, 0, 1, 1\] but its mask has {row.area} pixels in"):
        rows_to_frame(wrong_bbox)
    text_mask = {"size": row.mask["size"], "counts": row.mask["counts"].decode()}  # RLE from JSON: text counts
    text_counts = [type(row)(**{**row.__dict__, "mask": text_mask})]
    np.testing.assert_array_equal(rows_to_frame(text_counts).ids != 0, rows_to_frame([row]).ids != 0)
    bad = tmp_path / "t" / "video_key=x" / "part-00000000-00000000.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(CorruptFileError, match=rf"{tmp_path / 't'}: cannot read the segments table: .*{bad.name}"):
        read_segments_table(str(tmp_path / "t"))
    with pytest.raises(CorruptFileError, match="segments table not found"):
        read_segments_table(str(tmp_path / "missing"))


def test_table_rows_convert_back():
    frame = busy_frame(7)
    assert table_to_rows(frame_to_batch(frame, "v", 1, "img")) == frame_to_rows(frame, "v", 1, "img")


def _round_trip_remote(root: str) -> None:
    frame = busy_frame(8)
    write_segments_table(root, frame_to_batch(frame, "0003", 7, "img"))
    (item,) = list(iter_table_frames(read_segments_table(root)))
    assert (item.video_id, item.frame_index) == ("0003", 7)
    np.testing.assert_array_equal(item.frame.ids, frame.ids)
    assert item.frame.segments == frame.segments


def test_memory_uri():
    root = f"memory://tubeflow-test-{uuid.uuid4().hex[:8]}/segments"
    try:
        _round_trip_remote(root)
    finally:
        fsspec.filesystem("memory").rm(root.split("://")[1].rsplit("/", 1)[0], recursive=True)


def test_s3_uri(s3_bucket):
    _round_trip_remote(f"{s3_bucket}/segments")


def _table_with_times(root: str) -> dict:
    """Two videos whose ids a type-inferring reader would turn into integers, with times."""
    frames = {}
    for video, t0 in (("0000", 1_700_000_000_000_000_000), ("0001", 1_700_000_000_020_000_000)):
        for k in range(3):
            frame = busy_frame(seed=10 * int(video) + k, segments=4)
            frames[(video, k)] = frame
            write_segments_table(root, frame_to_batch(frame, video, k, f"{video}_{k}", timestamp_ns=t0 + k * 100_000_000,
                                                      source_uri=f"s3://fleet/{video}.mcap", topic="/cam"))
    return frames


def test_duckdb_and_polars_read_the_id_column_and_join_on_time(tmp_path):
    """The README's one-liners: the video_id column stays text (Polars infers partition values'
    types), the partition key does not clash with it, and two cameras join on time."""
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    root = str(tmp_path / "segments")
    _table_with_times(root)
    glob = f"{root}/*/*.parquet"
    ids = duckdb.sql(f"SELECT DISTINCT video_id FROM read_parquet('{glob}', hive_partitioning = true) "
                     "ORDER BY video_id").fetchall()
    assert ids == [("0000",), ("0001",)]
    # the frame of video 0001 within 30 ms of each frame of 0000
    pairs = duckdb.sql(f"""
        WITH f AS (SELECT DISTINCT video_id, frame_index, timestamp_ns FROM read_parquet('{glob}'))
        SELECT a.frame_index, b.frame_index FROM f a JOIN f b
          ON a.video_id = '0000' AND b.video_id = '0001' AND abs(a.timestamp_ns - b.timestamp_ns) < 30000000
        ORDER BY 1""").fetchall()
    assert pairs == [(0, 0), (1, 1), (2, 2)]
    df = pl.scan_parquet(glob, hive_partitioning=True).collect()
    assert df.schema["video_id"] == pl.String and sorted(df["video_id"].unique().to_list()) == ["0000", "0001"]
    frames = df.select("video_id", "frame_index", "timestamp_ns").unique().sort("timestamp_ns")
    joined = frames.filter(pl.col("video_id") == "0000").join_asof(
        frames.filter(pl.col("video_id") == "0001"), on="timestamp_ns", strategy="nearest", tolerance=30_000_000)
    assert joined["frame_index_right"].to_list() == [0, 1, 2]


def test_tables_of_the_first_layout_are_still_read(tmp_path):
    """version 1: ROOT/video_id=<id>/ files without the video_id column or the new columns."""
    root = tmp_path / "old"
    frame = busy_frame(4)
    batch = frame_to_batch(frame, "a b", 2, "img")
    legacy = pa.Table.from_batches([batch]).drop_columns(["video_id", "timestamp_ns", "source_uri", "topic"])
    (root / "video_id=a%20b").mkdir(parents=True)
    pq.write_table(legacy, root / "video_id=a%20b" / "part-00000002-00000002.parquet")
    write_segments_table(str(root), frame_to_batch(busy_frame(5), "new", 0, "img", timestamp_ns=7))
    table = read_segments_table(str(root))
    assert table["video_id"].to_pylist() == ["a b"] * batch.num_rows + ["new"] * len(busy_frame(5).segments)
    assert set(table.filter(pa.compute.equal(table["video_id"], "a b"))["timestamp_ns"].to_pylist()) == {None}
    assert read_segments_table(str(root), video_ids=["a b"]).num_rows == batch.num_rows
