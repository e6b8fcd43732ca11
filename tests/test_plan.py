"""Corpus planning: discovery (prefix and manifests), chunking, fingerprints for change detection."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError, InputError
from operators.video import VideoWriter
from pipelines.plan import chunk_ranges, discover, fingerprint, plan_chunks, read_manifest


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (64, 96, 3), np.uint8) for _ in range(n)]


def _write_mp4(uri: str, n: int) -> None:
    with VideoWriter(uri, fps=10) as writer:
        writer.write_all(_frames(n))


def _write_sequence(directory, n: int) -> None:
    os.makedirs(directory, exist_ok=True)
    for i, rgb in enumerate(_frames(n, seed=1)):
        cv2.imwrite(str(directory / f"{i:04d}.png"), rgb[..., ::-1])


def test_chunk_ranges_cover_every_frame_once():
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(8, 4) == [(0, 4), (4, 8)]
    assert chunk_ranges(3, 100) == [(0, 3)]
    assert chunk_ranges(0, 4) == []
    with pytest.raises(ValueError):
        chunk_ranges(5, 0)


def test_discover_prefix_finds_containers_and_image_sequences(tmp_path):
    _write_mp4(str(tmp_path / "a.mp4"), 7)
    _write_mp4(str(tmp_path / "city" / "b.mp4"), 3)
    _write_sequence(tmp_path / "seq", 5)
    entries = discover(str(tmp_path))
    assert [e.video_id for e in entries] == ["a", "city/b", "seq"]
    chunks = plan_chunks(entries[0].video_id, entries[0].uri, chunk_frames=3)
    assert [(c.frame_start, c.frame_end, c.chunk_index) for c in chunks] == [(0, 3, 0), (3, 6, 1), (6, 7, 2)]
    seq = plan_chunks("seq", entries[2].uri, chunk_frames=4)
    assert [(c.frame_start, c.frame_end) for c in seq] == [(0, 4), (4, 5)]
    assert entries[2].fingerprint.files == 5


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_resolves_relative_uris_and_gt(tmp_path, kind):
    _write_mp4(str(tmp_path / "videos" / "x.mp4"), 4)
    rows = [{"video_id": "x", "uri": "videos/x.mp4", "gt": "gt/x"},
            {"video_id": "gone", "uri": str(tmp_path / "missing.mp4"), "gt": ""}]
    manifest = tmp_path / f"manifest.{kind}"
    if kind == "csv":
        manifest.write_text("video_id,uri,gt\n" + "".join(f"{r['video_id']},{r['uri']},{r['gt']}\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), manifest)
    entries = read_manifest(str(manifest))
    assert entries[0].uri == fs.join(str(tmp_path), "videos/x.mp4") and entries[0].gt == fs.join(str(tmp_path), "gt/x")
    assert entries[1].gt is None and entries[1].fingerprint.etag == "missing"
    with pytest.raises(CorruptFileError, match="missing.mp4"):  # planned, then fails clearly in decode
        plan_chunks("gone", entries[1].uri, 4)


def test_manifest_errors_name_the_file_and_row(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("video_id,uri\nx,\n")
    with pytest.raises(FormatMismatchError, match=r"m\.csv: row 1"):
        read_manifest(str(bad))
    dup = tmp_path / "d.csv"
    dup.write_text("video_id,uri\nx,a.mp4\nx,b.mp4\n")
    with pytest.raises(FormatMismatchError, match="listed twice"):
        read_manifest(str(dup))
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(str(tmp_path / "none.parquet"))


def test_fingerprint_changes_with_content_and_mtime(tmp_path):
    uri = str(tmp_path / "v.mp4")
    _write_mp4(uri, 3)
    first = fingerprint(uri)
    assert fingerprint(uri) == first  # stable while nothing changes
    os.utime(uri, (1_000_000, 1_000_000))
    assert fingerprint(uri).digest != first.digest
    _write_mp4(uri, 5)
    assert fingerprint(uri).size != first.size


def test_empty_and_undecodable_videos_fail_planning_naming_the_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 50)
    (tmp_path / "noframes").mkdir()
    for name in ("empty.mp4", "junk.mp4", "noframes"):
        with pytest.raises(InputError, match=name):
            plan_chunks(name, str(tmp_path / name), 4)


def test_s3_prefix_fingerprints_carry_the_etag(s3_bucket):
    _write_mp4(f"{s3_bucket}/corpus/a.mp4", 4)
    entries = discover(f"{s3_bucket}/corpus")
    assert [e.video_id for e in entries] == ["a"]
    assert entries[0].fingerprint.etag and entries[0].fingerprint.size > 0
    assert [(c.frame_start, c.frame_end) for c in plan_chunks("a", entries[0].uri, 3)] == [(0, 3), (3, 4)]
